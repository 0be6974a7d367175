"""The checks a head makes of a Redis it did not start: a pure function of the server's facts."""

from __future__ import annotations

from dataclasses import replace

from rayr.gcs.preflight import ServerFacts, assess

GOOD = ServerFacts(version="7.0.15", role="master", cluster_enabled=False, maxmemory=0,
                   maxmemory_policy="allkeys-lru", aof_enabled=True, save="3600 1", cluster_name="default",
                   live_nodes=0, supervisor_alive=False)


def test_a_suitable_server_passes():
    found = assess(GOOD)
    assert found.errors == [] and found.warnings == []


def test_each_problem_is_named_with_its_fix():
    cases = {
        "rayr needs 6.2 or newer": replace(GOOD, version="6.0.9"),
        "give rayr the cluster's address, redis+cluster://": replace(GOOD, cluster_enabled=True),
        "is not a Redis Cluster": replace(GOOD, cluster_address=True),
        "read-only replica": replace(GOOD, role="slave"),
        "maxmemory-policy noeviction": replace(GOOD, maxmemory=1 << 30),
        "--cluster-name": replace(GOOD, live_nodes=2),
        "add ~rayr:{default/* to its ACL rules": replace(GOOD, spread_denied=True),
    }
    for says, facts in cases.items():
        errors = assess(facts).errors
        assert len(errors) == 1 and says in errors[0], (says, errors)
    in_use = assess(replace(GOOD, live_nodes=1, supervisor_alive=True)).errors[0]
    assert "'default' is in use" in in_use and "1 live node(s) and a job supervisor" in in_use


def test_a_redis_cluster_given_as_one_is_fine():
    assert assess(replace(GOOD, cluster_enabled=True, cluster_address=True)).errors == []


def test_an_evicting_policy_without_a_memory_limit_never_evicts():
    assert assess(replace(GOOD, maxmemory=0, maxmemory_policy="volatile-ttl")).errors == []
    assert assess(replace(GOOD, maxmemory=1 << 30, maxmemory_policy="noeviction")).errors == []


def test_no_persistence_is_a_warning_not_an_error():
    found = assess(replace(GOOD, aof_enabled=False, save=""))
    assert found.errors == [] and "no persistence" in found.warnings[0]
    hidden = assess(replace(GOOD, aof_enabled=False, save=None)).warnings[0]
    assert "CONFIG GET is refused" in hidden
