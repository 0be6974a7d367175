"""Redis Sentinel: a master, a replica and three Sentinels on loopback; the master is killed
(SIGKILL) with 2,000 tasks and 10 actors' calls in flight. Every process follows the failover
to the promoted replica, every result is right, no actor call runs twice, the actors still
answer, and the head's monitor and the CLI work on the new master."""

from __future__ import annotations

import os
import time

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

import rayr
from rayr import context
from rayr.gcs.address import SENTINEL_PASSWORD_ENV, _Sentinels
from rayr.gcs.client import connect
from rayr.gcs.cluster import RedisAuthError, check
from rayr.testing import Cluster, run_cli
from rayr.testing_redis import SentinelSet, sentinel_set, server_binary
from rayr.util.placement_group import placement_group, remove_placement_group

PASSWORD = "sentinel-test-pw"
TASKS, ACTORS, CALLS = 2000, 10, 20


@rayr.remote(max_retries=3)
def square(i: int) -> int:
    time.sleep(0.002)
    return i * i


@rayr.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def _get_or_explain(refs: list, sentinels: SentinelSet, timeout: float = 120) -> list:
    """``rayr.get(refs)``, or a failure that says where the missing results are: stored but
    not delivered to the driver's inbox, still queued, or taken by a consumer (and which)."""
    try:
        return rayr.get(refs, timeout=timeout)
    except rayr.exceptions.GetTimeoutError:
        pass
    _, missing = rayr.wait(refs, num_returns=len(refs), timeout=0)
    core = context.require_core()
    promoted = sentinels.replica.client()
    try:
        stored = sum(bool(promoted.exists(core.keys.object(r.hex()))) for r in missing)
        streams = {}
        for key in promoted.scan_iter(match=core.keys.prefix + "tasks:*", count=1000):
            if promoted.type(key) != b"stream":
                continue
            groups = promoted.xinfo_groups(key)
            streams[key.decode()] = (promoted.xlen(key), [
                (g["name"], g["pending"], [(c["name"], c["pending"])
                                           for c in promoted.xinfo_consumers(key, g["name"]) if c["pending"]])
                for g in groups])
        inbox = promoted.llen(core.keys.inbox(core.worker_hex))
    finally:
        promoted.close()
    pytest.fail(f"{len(missing)} of {len(refs)} results missing after {timeout}s (e.g. {missing[0].hex()}): "
                f"{stored} have a record in Redis; the driver's inbox holds {inbox}; task streams "
                f"(length, groups with pending entries per consumer): {streams}")


@pytest.mark.timeout(420)
def test_the_workload_survives_the_master_failing_over(sentinels, tmp_path):
    cluster = Cluster(sentinels.url, redis_password=PASSWORD)
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        rayr.init(address=sentinels.url, _redis_password=PASSWORD, _cluster_name=cluster.name,
                  log_to_driver=False)
        actors = [Counter.remote() for _ in range(ACTORS)]
        assert rayr.get([a.add.remote(0) for a in actors], timeout=120) == [0] * ACTORS
        refs = [square.remote(i) for i in range(TASKS)]
        calls = [[a.add.remote(1) for _ in range(CALLS)] for a in actors]
        time.sleep(0.3)  # in flight: some results in, most not
        old = sentinels.current_master()
        assert old == ("127.0.0.1", sentinels.master.port)
        sentinels.master.kill()
        assert _get_or_explain(refs, sentinels) == [i * i for i in range(TASKS)]
        # each call ran exactly once, in order: a call read again after the failover is skipped
        assert [_get_or_explain(c, sentinels) for c in calls] == [list(range(1, CALLS + 1))] * ACTORS
        assert rayr.get([a.add.remote(0) for a in actors], timeout=120) == [CALLS] * ACTORS
        assert sentinels.current_master() == ("127.0.0.1", sentinels.replica.port)
        # the head's monitor followed too: it places a group on the new master
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert pg.wait(60)
        remove_placement_group(pg)
        assert len([n for n in rayr.nodes() if n["Alive"]]) == 2
        # the CLI reaches the cluster through the Sentinels as well
        env = {k: v for k, v in os.environ.items() if k != "RAYR_ADDRESS"}
        out = run_cli("status", "--address", sentinels.url, env={
            **env, "RAYR_TEMP_DIR": str(tmp_path), "RAYR_REDIS_PASSWORD": PASSWORD,
            "RAYR_CLUSTER_NAME": cluster.name})
        assert out.stdout.count(" 1 node_") == 2
    finally:
        rayr.shutdown()
        cluster.shutdown()


def test_sentinels_with_a_password_of_their_own(tmp_path, monkeypatch):
    """Sentinels that require a password: without it the error names the variable to set,
    with it a cluster runs; and where it is the Redis password, none needs to be set."""
    binary, why = server_binary()
    if binary is None:
        pytest.skip(why)
    monkeypatch.delenv(SENTINEL_PASSWORD_ENV, raising=False)
    with sentinel_set(binary, str(tmp_path / "redis"), password=PASSWORD,
                      sentinel_password="the-sentinels-own") as found:
        client = connect(found.url, PASSWORD, cluster_name="any")
        try:
            with pytest.raises(RedisAuthError, match=SENTINEL_PASSWORD_ENV):
                check(client, found.url, PASSWORD)
        finally:
            client.close()
        master = ("127.0.0.1", found.master.port)
        hosts = [("127.0.0.1", s.port) for s in found.sentinels]
        once = {"socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0)}
        tried = _Sentinels(hosts, once, "the-sentinels-own")  # as where it is the Redis password
        assert tuple(tried.discover_master(found.name)) == master
        monkeypatch.setenv(SENTINEL_PASSWORD_ENV, "the-sentinels-own")
        cluster = Cluster(found.url, redis_password=PASSWORD, temp_dir=str(tmp_path / "rayr"))
        try:
            cluster.add_node(num_cpus=1)
            rayr.init(address=found.url, _redis_password=PASSWORD, _cluster_name=cluster.name)
            try:
                assert rayr.get(square.remote(7), timeout=60) == 49
            finally:
                rayr.shutdown()
        finally:
            cluster.shutdown()
