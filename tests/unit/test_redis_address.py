"""Redis addresses: every accepted form, the password taken out, errors that say what is right."""

from __future__ import annotations

import pytest

from rayr.gcs.address import parse, redacted, split_password
from rayr.gcs.client import normalize_address


@pytest.mark.parametrize(("text", "url", "password", "db"), [
    ("127.0.0.1:6379", "redis://127.0.0.1:6379", None, 0),
    ("redis://:p%40ss@h:1/3", "redis://h:1/3", "p@ss", 3),
    ("rediss://alice:pw@h:6380?ssl_ca_certs=/c/ca.pem", "rediss://alice@h:6380?ssl_ca_certs=/c/ca.pem",
     "pw", 0),
    ("unix:///run/r.sock?db=2", "unix:///run/r.sock?db=2", None, 2),
    ("unix://:pw@/run/r.sock", "unix:///run/r.sock", "pw", 0),
    ("redis+sentinel://:pw@h1:26379,h2:26380/mymaster", "redis+sentinel://h1:26379,h2:26380/mymaster",
     "pw", 0),
    ("redis+sentinel://h1:26379/mymaster/2", "redis+sentinel://h1:26379/mymaster/2", None, 2),
    ("redis://[::1]:6379", "redis://[::1]:6379", None, 0),
    ("redis+cluster://:pw@h1:7000,h2:7001", "redis+cluster://h1:7000,h2:7001", "pw", 0),
])
def test_accepted_forms_and_the_password_taken_out(text, url, password, db):
    assert split_password(text) == (url, password)
    assert parse(text).db == db
    assert parse(url).url() == url  # canonical: parsing it again changes nothing
    assert normalize_address(text) == url


def test_sentinel_hosts_and_master():
    parsed = parse("rediss+sentinel://u@a:1,b:2/prod")
    assert parsed.sentinel and parsed.tls
    assert parsed.hosts == (("a", 1), ("b", 2)) and parsed.service == "prod" and parsed.username == "u"


def test_cluster_seed_nodes():
    parsed = parse("rediss+cluster://u@a:1,b:2,c:3")
    assert parsed.cluster and parsed.tls and not parsed.sentinel
    assert parsed.hosts == (("a", 1), ("b", 2), ("c", 3)) and parsed.username == "u"


def test_a_cluster_address_needs_the_rayr_cluster_name_to_pick_its_node():
    from rayr.gcs.address import connection_pool, slot_of
    from rayr.keys import Keys

    with pytest.raises(ValueError, match="needs the rayr cluster name"):
        connection_pool("redis+cluster://a:1,b:2", None)
    pool = connection_pool("redis+cluster://a:1,b:2", None, cluster_name="prod")
    # the slot of every key of the cluster: the hash tag {prod}
    assert pool.connection_kwargs["slot_master"].slot == slot_of("prod") == 811
    assert all(slot_of("prod") == slot_of_key(key) for key in (Keys("prod").actor("ab"), Keys("prod").nodes))


def slot_of_key(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


@pytest.mark.parametrize(("text", "says"), [
    ("http://h:1", "expected 'host:port'"),
    ("redis+cluster://h:1/2", "a Redis Cluster has only database 0"),
    ("redis://h", "must name a host and a port"),
    ("redis+sentinel://h:1", "names no Sentinel master"),
    ("redis://h:1/x", "the database must be a number"),
    ("redis://h:1?foo=1", "unknown option(s) foo"),
    ("rediss://h:1?ssl_cert_reqs=maybe", "must be required, optional or none"),
    ("unix://relative", "needs an absolute path"),
])
def test_bad_addresses_say_what_would_be_right(text, says):
    with pytest.raises(ValueError) as info:
        parse(text)
    assert says in str(info.value)


def test_errors_and_printed_addresses_never_show_the_password():
    with pytest.raises(ValueError) as info:
        parse("redis://u:hunter2@h")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in redacted("redis://u:hunter2@h:1/0")
    assert "hunter2" not in redacted("bogus://u:hunter2@h")


def test_tls_options_can_be_added_and_are_checked():
    base = parse("rediss://h:6380")
    url = base.with_options(ssl_ca_certs="/ca.pem", ssl_certfile=None).url()
    assert url == "rediss://h:6380?ssl_ca_certs=/ca.pem"
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        base.with_options(ssl_cert_reqs="sometimes")
