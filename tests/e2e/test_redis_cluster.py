"""rayr on a Redis Cluster (three masters on loopback): `rayr start --head --redis-address
redis+cluster://...` and a second node, then tasks, an actor, an object pulled across nodes, a
placement group, a submitted job, the CLI, and a node's death. The tables carry the rayr
cluster's name as hash tag, so they live in one slot, on the master that serves it; an object
on its way between nodes goes through the master of its spread tag."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from typing import Any

import pytest

import rayr
from rayr import ObjectRef, serialization
from rayr.exceptions import TaskCancelledError
from rayr.gcs import records as rec
from rayr.gcs.address import slot_of, spread_slot
from rayr.job_submission import JobStatus, JobSubmissionClient
from rayr.keys import Keys, spread_tag, with_object_tag
from rayr.testing import run_cli, wait_node_dead
from rayr.util import state
from rayr.util.placement_group import placement_group, remove_placement_group
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

PASSWORD = "cluster-test-pw"
NAME = "on-a-redis-cluster"


def _env(temp_dir: str, **extra: str) -> dict[str, str]:
    ours = ("RAYR_REDIS_PASSWORD", "RAYR_ADDRESS", "RAYR_CLUSTER_NAME", "RAYR_REDIS_PASSWORD_FILE")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    return {**env, "RAYR_TEMP_DIR": temp_dir, "RAYR_REDIS_PASSWORD": PASSWORD, "RAYR_CLUSTER_NAME": NAME,
            **extra}


@rayr.remote
def where() -> str:
    return rayr.get_runtime_context().get_node_id()


@rayr.remote(max_retries=3)
def where_after(delay: float) -> str:
    time.sleep(delay)
    return rayr.get_runtime_context().get_node_id()


@rayr.remote
def total(data: bytes) -> int:
    return sum(data[::4096])


@rayr.remote
def late(delay: float) -> str:
    time.sleep(delay)
    return "late"


@rayr.remote
class Maker:
    """Owns objects of its own: their keys are under its inbox's spread tag."""

    def worker(self) -> str:
        return rayr.get_runtime_context().get_worker_id()

    def later(self, delay: float) -> list:
        return [late.remote(delay)]  # still running when the caller gets the ref

    def put(self, size: int) -> list:
        return [rayr.put(b"x" * size)]


@rayr.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def test_a_cluster_runs_on_a_redis_cluster(redis_cluster_set, tmp_path):
    url = redis_cluster_set.url
    head_dir, node_dir = str(tmp_path / "head"), str(tmp_path / "node")
    head_env, node_env = _env(head_dir), _env(node_dir, RAYR_ADDRESS=url)
    try:
        run_cli("start", "--head", "--redis-address", url, "--num-cpus", "1", env=head_env)
        out = run_cli("start", "--num-cpus", "1", env=node_env)
        node_id = out.stdout.split()[2]
        rayr.init(address=url, _redis_password=PASSWORD, _cluster_name=NAME, _temp_dir=head_dir)
        try:
            _workload(url, node_id)
            _transfer_through_its_spread_master(redis_cluster_set)
            _task_events_on_their_jobs_master(redis_cluster_set)
            _objects_under_their_owners_tags(redis_cluster_set)
            # its keys are on the master serving the slot of its name, and nowhere else
            owner = redis_cluster_set.owner_of(slot_of(NAME))
            counts = []
            for master in redis_cluster_set.masters:
                client: Any = master.client()
                try:
                    counts.append(sum(1 for _ in client.scan_iter(match=f"rayr:{{{NAME}}}:*", count=1000)))
                finally:
                    client.close()
            assert counts[owner] > 0 and sum(counts) == counts[owner], counts
            status = run_cli("status", env=_env(head_dir)).stdout
            assert status.count(" 1 node_") == 2, status
            # a node dies: the head's monitor sees it, queues again the task it was running
            # (pending on a stream under the driver's tag, on that tag's master), and work
            # goes on on the head
            pinned = NodeAffinitySchedulingStrategy(node_id, soft=False)
            running = where_after.options(scheduling_strategy=pinned).remote(3.0)
            rayr.wait([running], timeout=1.0)  # (started by now, or still queued: both are recovered)
            raylet = _raylet_pid(node_dir)
            os.kill(raylet, signal.SIGKILL)
            wait_node_dead(node_id, timeout=60)
            assert rayr.get(where.remote(), timeout=60) != node_id
            assert rayr.get(running, timeout=60) not in (node_id, None)  # ran again, on the head
        finally:
            rayr.shutdown()
    finally:
        run_cli("stop", env=node_env, check=False)
        run_cli("stop", env=head_env, check=False)


def _workload(url: str, node_id: str) -> None:
    nodes = {n["NodeID"] for n in rayr.nodes() if n["Alive"]}
    assert len(nodes) == 2 and node_id in nodes
    assert set(rayr.get([where.remote() for _ in range(200)], timeout=120)) <= nodes
    counter = Counter.remote()
    assert rayr.get([counter.add.remote(1) for _ in range(50)], timeout=60) == list(range(1, 51))
    data = os.urandom(4 << 20)  # stored, not inlined: pulled by the other node through Redis
    ref = rayr.put(data)
    other = next(n for n in nodes if n != rayr.get_runtime_context().get_node_id())
    on_other = total.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
    assert rayr.get(on_other.remote(ref), timeout=60) == sum(data[::4096])
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(60), "the head's monitor did not place the group"
    placed = rayr.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                       for i in range(2)], timeout=60)
    assert set(placed) == nodes
    remove_placement_group(pg)
    client = JobSubmissionClient(url, redis_password=PASSWORD, cluster_name=NAME)
    try:
        sid = client.submit_job(entrypoint=f"{shlex.quote(sys.executable)} -c \"import rayr; rayr.init(); "
                                           "print('answer', rayr.get(rayr.remote(lambda: 42).remote()))\"")
        status = client.wait_until_finish(sid, timeout_s=120)
        assert status == JobStatus.SUCCEEDED, (status, client.get_job_logs(sid))
        assert "answer 42" in client.get_job_logs(sid)
    finally:
        client.close()


def _input_bytes(cluster_set: Any) -> list[int]:
    out = []
    for master in cluster_set.masters:
        client: Any = master.client()
        try:
            out.append(int(client.info("stats")["total_net_input_bytes"]))
        finally:
            client.close()
    return out


def _transfer_through_its_spread_master(cluster_set: Any) -> None:
    """An object pulled by the other node crosses the master serving its transfer keys' tag,
    not the tables' master (an object whose tag lands elsewhere is picked: 2 in 3 do)."""
    tables = cluster_set.owner_of(slot_of(NAME))
    data = os.urandom(8 << 20)  # incompressible: the bytes cross Redis as they are
    for _ in range(30):
        ref = rayr.put(data)
        spread = cluster_set.owner_of(spread_slot(Keys(NAME), spread_tag(ref.hex())))
        if spread != tables:
            break
    assert spread != tables, "30 objects in a row had their spread tag on the tables' master"
    here = rayr.get_runtime_context().get_node_id()
    other = next(n["NodeID"] for n in rayr.nodes() if n["Alive"] and n["NodeID"] != here)
    on_other = total.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
    before = _input_bytes(cluster_set)
    assert rayr.get(on_other.remote(ref), timeout=60) == sum(data[::4096])
    grew = [after - b for after, b in zip(_input_bytes(cluster_set), before, strict=True)]
    assert grew[spread] >= len(data) and grew[tables] < len(data) // 4, (grew, spread, tables)


def _task_events_on_their_jobs_master(cluster_set: Any) -> None:
    """The state API reads the job's task events, which live on its spread tag's master."""
    job = rayr.get_runtime_context().get_job_id()
    deadline = time.monotonic() + 60
    while not (listed := state.list_tasks(filters=[("job_id", "=", job)], raise_on_missing_output=False,
                                          limit=1000)):
        assert time.monotonic() < deadline, "no task events reached the state API"
        time.sleep(0.2)
    assert any(t.name.endswith("where") for t in listed), [t.name for t in listed][:5]
    keys = Keys(NAME)
    holder = cluster_set.owner_of(spread_slot(keys, spread_tag(job)))
    client: Any = cluster_set.masters[holder].client()
    try:
        assert client.exists(keys.task_events_owner(job)) or client.exists(keys.task_events_exec(job))
    finally:
        client.close()


def _objects_under_their_owners_tags(cluster_set: Any) -> None:
    """Objects live on the master of their owner's spread tag. A driver waiting for an object an
    actor owns (on another master) hears of it by a push of its own after the store; and a
    record it is not told of at all is found by its periodic look (the storer died between)."""
    keys = Keys(NAME)
    me = rayr.get_runtime_context().get_worker_id()
    master_of = lambda worker: cluster_set.owner_of(spread_slot(keys, spread_tag(worker)))  # noqa: E731
    for _ in range(20):
        maker = Maker.remote()
        theirs = rayr.get(maker.worker.remote(), timeout=60)
        if master_of(theirs) != master_of(me):
            break
        rayr.kill(maker)
    assert master_of(theirs) != master_of(me), "20 actors in a row had their inbox on the driver's master"
    [ref] = rayr.get(maker.later.remote(1.0), timeout=60)
    assert keys.tag_of(keys.object(ref.hex())) == spread_tag(theirs)  # the owner's tag
    # each submitter's tasks queue on streams under its own tag, on that tag's master
    streams = rayr.context.require_core().gcs.task_streams()
    for worker in (me, theirs):
        mine = [s for s in streams if keys.tag_of(s) == spread_tag(worker)]
        assert mine, (worker, streams)
        client: Any = cluster_set.masters[master_of(worker)].client()
        try:
            assert all(client.exists(s) for s in mine)
        finally:
            client.close()
    # a task taken by a raylet is cancelled through its stream's slot and its node's stream
    slow = late.remote(60)
    time.sleep(1)
    rayr.cancel(slow)
    with pytest.raises(TaskCancelledError):
        rayr.get(slow, timeout=30)
    assert rayr.get(ref, timeout=60) == "late"
    [big] = rayr.get(maker.put.remote(300_000), timeout=60)
    assert rayr.get(big, timeout=60) == b"x" * 300_000
    # the state API finds objects on every master (here: the actor's and the driver's)
    mine = rayr.put(b"mine")
    listed = {o.object_id for o in state.list_objects(limit=10_000, raise_on_missing_output=False)}
    assert {big.hex(), ref.hex(), mine.hex()} <= listed
    del big
    # a record stored without telling us: only the driver's own look can find it
    suffix = with_object_tag(os.urandom(12), spread_tag(theirs))
    oid = bytes.fromhex(rayr.get_runtime_context().get_job_id()) + suffix + b"\0\0\0\1"
    unseen = ObjectRef(oid)
    client = cluster_set.masters[master_of(theirs)].client()
    try:
        record = rec.value_record(serialization.serialize("found").to_bytes())
        timer = threading.Timer(0.5, lambda: client.set(keys.object(oid.hex()), record))
        timer.start()
        assert rayr.get(unseen, timeout=60) == "found"
        timer.join()
    finally:
        client.close()


def _raylet_pid(temp_dir: str) -> int:
    import json

    directory = os.path.join(temp_dir, "started")
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            for entry in json.load(f)["processes"]:
                if entry["role"] == "raylet":
                    return int(entry["pid"])
    raise LookupError(f"no raylet recorded under {directory}")
