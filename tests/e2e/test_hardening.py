"""Faults that used to lose or stall work: a frozen node, a holder dying under a pull, a driver
that holds the GIL, Redis away for longer than a node timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import rayr
from rayr import procs
from rayr.exceptions import RaySystemError
from rayr.keys import TASK_GROUP
from rayr.node import free_port, start_redis
from rayr.testing import Cluster, wait_node_dead
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _pending_under(node_id: str) -> int:
    """Task-stream entries pending under a consumer of ``node_id`` (its raylet or its workers)."""
    core = rayr.context.require_core()
    count = 0
    for stream in core.gcs.task_streams():
        summary = core.gcs.stream_client(stream).xpending(stream, TASK_GROUP)
        for item in summary.get("consumers") or []:
            if item["name"].decode().startswith(node_id):
                count += item["pending"]
    return count


def test_a_frozen_nodes_workers_lose_no_task(cluster3_long_leases):
    """SIGSTOP a raylet past its timeout: its leased workers keep taking tasks after the node
    is declared dead (and its tasks first recovered); when it resumes, it exits and they die
    with it. What they had taken must run again elsewhere."""
    cluster, nodes = cluster3_long_leases

    @rayr.remote(max_retries=3)
    def step(i):
        time.sleep(0.02)
        return i

    refs = [step.remote(i) for i in range(1500)]
    raylet = cluster._local.raylets[nodes[2]]
    deadline = time.time() + 30
    while _pending_under(nodes[2]) == 0:  # its leased worker is busy
        assert time.time() < deadline, "node 2 never took a task"
        time.sleep(0.01)
    raylet.send_signal(signal.SIGSTOP)
    try:
        wait_node_dead(nodes[2])
        time.sleep(0.3)  # the monitor's first look at the dead node's tasks is over
        deadline = time.time() + 30
        while _pending_under(nodes[2]) == 0:  # ... and its worker has taken more since
            assert time.time() < deadline, "the frozen node's worker took nothing after its death"
            time.sleep(0.01)
    finally:
        raylet.send_signal(signal.SIGCONT)
    assert raylet.wait(timeout=30) == 3  # it learned it was given up, and stopped
    cluster._local.raylets.pop(nodes[2])
    cluster._local.clean_store(nodes[2])
    assert rayr.get(refs, timeout=120) == list(range(1500))


def test_a_pull_whose_holder_dies_goes_to_reconstruction_at_once(cluster3):
    cluster, nodes = cluster3

    @rayr.remote(max_retries=2)
    def make():
        return np.arange(1_000_000)

    pinned = NodeAffinitySchedulingStrategy(nodes[1], soft=True)
    ref = make.options(scheduling_strategy=pinned).remote()
    rayr.wait([ref], timeout=60)
    raylet = cluster._local.raylets.pop(nodes[1])
    raylet.send_signal(signal.SIGKILL)  # the pull below starts while the node still counts as alive
    start = time.monotonic()
    try:
        value = rayr.get(ref, timeout=40)  # the pull's own timeout is 60 s
    finally:
        raylet.wait()
        cluster._local.clean_store(nodes[1])
    assert value.sum() == np.arange(1_000_000).sum()
    assert time.monotonic() - start < 40


GIL_HOLDER = """
import ctypes, sys, numpy as np, rayr
rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2])

@rayr.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

counter = Counter.remote()
assert rayr.get(counter.add.remote(), timeout=60) == 1
big = rayr.put(np.ones(1_000_000))
small = rayr.put("kept")
print("holding", flush=True)
ctypes.PyDLL(None).sleep(int(sys.argv[3]))  # a C call that keeps the GIL: no thread of ours runs
print(rayr.get(counter.add.remote(), timeout=60), rayr.get(big, timeout=60).sum(),
      rayr.get(small, timeout=60), flush=True)
rayr.shutdown()
"""


def test_a_driver_holding_the_gil_is_not_declared_dead(cluster3):
    cluster, _ = cluster3
    hold_s = 5  # more than three times the node timeout: its liveness key lapses
    proc = subprocess.Popen([sys.executable, "-c", GIL_HOLDER, cluster.address, cluster.name, str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["holding", "2 1000000.0 kept"], out + err


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own (appendonly), with a function that stops it and one that
    starts it again."""
    port = free_port()
    holder = {"proc": start_redis(port, workdir=str(tmp_path), persist=True)}

    def stop() -> None:
        procs.stop([holder["proc"]])  # SIGTERM: Redis flushes its append-only file and exits

    def start() -> None:
        holder["proc"] = start_redis(port, workdir=str(tmp_path), persist=True)

    yield f"redis://127.0.0.1:{port}", stop, start
    procs.stop([holder["proc"]])


def test_a_redis_outage_longer_than_the_node_timeout_ends_no_job(own_redis):
    url, stop, start = own_redis
    # a node timeout with room for a loaded machine's reconnects; the outage lasts three of them
    cluster = Cluster(url, node_timeout_s=2.5, heartbeat_interval_s=0.3)
    try:
        cluster.add_node(num_cpus=2)
        rayr.init(address=url, _cluster_name=cluster.name)

        @rayr.remote
        class Keeper:
            def value(self):
                return "alive"

        @rayr.remote(max_retries=3)
        def later(i):
            time.sleep(0.05)
            return i

        keeper = Keeper.remote()
        assert rayr.get(keeper.value.remote(), timeout=60) == "alive"
        kept = rayr.put("my object")
        queued = [later.remote(i) for i in range(100)]
        stop()
        time.sleep(7.5)  # three node timeouts
        start()
        assert rayr.get(queued, timeout=90) == list(range(100))
        assert rayr.get(keeper.value.remote(), timeout=60) == "alive"
        assert rayr.get(kept, timeout=30) == "my object"
        core = rayr.context.require_core()
        assert core.gcs.get_job(core.job_id.hex()).get("status") == "RUNNING"
    finally:
        rayr.shutdown()
        cluster.shutdown()


def test_get_fails_clearly_once_redis_stays_away(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYR_REDIS_UNREACHABLE_TIMEOUT_S", "2")
    port = free_port()
    redis_proc = start_redis(port, workdir=str(tmp_path))
    url = f"redis://127.0.0.1:{port}"
    cluster = Cluster(url, redis_unreachable_timeout_s=2.0)
    try:
        cluster.add_node(num_cpus=1)
        rayr.init(address=url, _cluster_name=cluster.name)

        @rayr.remote
        def forever():
            time.sleep(3600)

        ref = forever.remote()
        rayr.wait([ref], timeout=0.5)
        procs.stop([redis_proc])  # no persistence: nothing will ever answer for ref
        start = time.monotonic()
        with pytest.raises(RaySystemError, match="unreachable for more than"):
            rayr.get(ref)
        assert time.monotonic() - start < 60
    finally:
        redis_proc = start_redis(port, workdir=str(tmp_path))  # so everything can stop cleanly
        try:
            rayr.shutdown()
            cluster.shutdown()
        finally:
            procs.stop([redis_proc])


REMOTE_DRIVER = """
import socket, sys, numpy as np
socket.gethostname = lambda: "a-host-with-no-node"  # so init() finds no node here
import rayr
rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2])

@rayr.remote
def total(x):
    return int(x.sum())

try:
    rayr.put(np.zeros(600 << 20, dtype=np.uint8))
except ValueError as err:
    print("refused:", err, flush=True)
try:
    total.remote(np.zeros(600 << 20, dtype=np.uint8))
except ValueError as err:
    print("refused:", err, flush=True)
small = rayr.put(np.ones(1000, dtype=np.uint8))
print(rayr.get(total.remote(small), timeout=60), flush=True)
rayr.shutdown()
"""


def test_a_remote_drivers_value_beyond_redis_limit_is_refused_and_nothing_is_lost(cluster3):
    cluster, _ = cluster3
    out = subprocess.run([sys.executable, "-c", REMOTE_DRIVER, cluster.address, cluster.name],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert lines[0].startswith("refused: put(): 600.0 MiB cannot travel inline through Redis")
    assert "start a node on this host" in lines[0]
    assert lines[1].startswith("refused: the arguments of total(): 600.0 MiB")
    assert lines[2] == "1000"


DYING_DRIVER = """
import os, sys, time, rayr
rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2])
marks = sys.argv[3]

@rayr.remote
def late():
    open(os.path.join(marks, "started"), "w").close()
    while not os.path.exists(os.path.join(marks, "go")):  # the test says when: after the job ended
        time.sleep(0.01)
    return 1

ref = late.remote()
while not os.path.exists(os.path.join(marks, "started")):
    time.sleep(0.01)
core = rayr.context.require_core()
print(core.worker_hex, core.job_id.hex(), ref.hex(), flush=True)
time.sleep(120)
"""


def test_a_dead_drivers_inbox_goes_with_its_job(cluster3, tmp_path):
    cluster, _ = cluster3
    core = rayr.context.require_core()
    args = [sys.executable, "-c", DYING_DRIVER, cluster.address, cluster.name, str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        driver, job, result = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    deadline = time.time() + 60
    while core.gcs.r.sismember(core.keys.running_jobs, job):
        assert time.time() < deadline, "the dead driver's job did not end"
        time.sleep(0.05)
    (tmp_path / "go").touch()  # the task still running finishes: its result lands in the inbox
    deadline = time.time() + 60
    while not core.gcs.r.exists(core.keys.object(result)):
        assert time.time() < deadline, "the task running when its job ended never finished"
        time.sleep(0.02)
    inbox = core.keys.inbox_keys(driver)
    deadline = time.time() + 60
    while core.gcs.r.exists(*inbox):  # the monitor deletes it again
        assert time.time() < deadline, "a result that came after the job ended stayed in its inbox"
        time.sleep(0.05)


def test_a_dead_workers_inbox_goes_too(cluster3, tmp_path):
    """A worker dies with a task it started still running: that task's result, which lands in
    the dead worker's inbox, does not stay there for good."""
    core = rayr.context.require_core()
    marks = str(tmp_path)

    @rayr.remote
    def child(marks: str) -> int:
        open(os.path.join(marks, "started"), "w").close()
        while not os.path.exists(os.path.join(marks, "go")):
            time.sleep(0.01)
        return 1

    @rayr.remote(max_retries=0)
    def parent(marks: str) -> None:
        ref = child.remote(marks)  # owned by this worker, which is about to die
        while not os.path.exists(os.path.join(marks, "started")):
            time.sleep(0.01)
        me = rayr.context.require_core().worker_hex
        with open(os.path.join(marks, "who"), "w") as f:
            f.write(f"{me} {ref.hex()}")
        os._exit(1)

    with pytest.raises(rayr.exceptions.WorkerCrashedError):
        rayr.get(parent.remote(marks), timeout=120)
    worker, result = (tmp_path / "who").read_text().split()
    (tmp_path / "go").touch()  # the child finishes: its result goes to the dead worker's inbox
    deadline = time.time() + 60
    while not core.gcs.r.exists(core.keys.object(result)):
        assert time.time() < deadline, "the child never finished"
        time.sleep(0.02)
    deadline = time.time() + 60
    while core.gcs.r.exists(*core.keys.inbox_keys(worker)):
        assert time.time() < deadline, "a result for a dead worker stayed in its inbox"
        time.sleep(0.05)


def test_an_actor_creation_does_not_wait_for_a_backlog_of_tasks(cluster3):
    @rayr.remote
    def busy(i):
        time.sleep(0.05)
        return i

    @rayr.remote
    class Late:
        def ping(self):
            return "pong"

    refs = [busy.remote(i) for i in range(600)]  # ~10 s of work for the three CPUs
    rayr.wait(refs, num_returns=3, timeout=60)  # leased workers are draining the backlog
    late = Late.remote()
    assert rayr.get(late.ping.remote(), timeout=60) == "pong"
    done, _ = rayr.wait(refs, num_returns=len(refs), timeout=0)
    assert len(done) < 450, f"the actor started only after {len(done)} of 600 queued tasks"
    assert rayr.get(refs, timeout=120) == list(range(600))


def test_an_actor_on_a_frozen_node_loses_no_call(cluster3):
    """The actor's process lives on under its frozen raylet, reading its mailbox, while the
    cluster restarts it elsewhere: calls it takes meanwhile must not be lost."""
    cluster, nodes = cluster3

    @rayr.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
    class Doubler:
        def double(self, x):
            time.sleep(0.01)
            return 2 * x

        def where(self):
            return rayr.get_runtime_context().get_node_id()

    actor = Doubler.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[2], soft=True)).remote()
    assert rayr.get(actor.where.remote(), timeout=60) == nodes[2]
    raylet = cluster._local.raylets[nodes[2]]
    calls: list = []
    stop = threading.Event()

    def keep_calling() -> None:  # calls keep coming through the freeze, the restart and the thaw
        while not stop.is_set():
            calls.append(actor.double.remote(len(calls)))
            time.sleep(0.005)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        time.sleep(0.5)
        raylet.send_signal(signal.SIGSTOP)
        try:
            wait_node_dead(nodes[2])
            deadline = time.time() + 60
            gcs = rayr.context.require_core().gcs
            while (info := gcs.actor_info(actor._actor_id)).get("state") != "ALIVE" or \
                    info["node"] == nodes[2]:
                assert time.time() < deadline, "the actor was not restarted"
                time.sleep(0.05)
            time.sleep(0.5)  # both incarnations take calls
        finally:
            raylet.send_signal(signal.SIGCONT)
        assert raylet.wait(timeout=30) == 3  # the old incarnation dies with it, mid-call
        time.sleep(0.5)
    finally:
        stop.set()
        caller.join()
    cluster._local.raylets.pop(nodes[2])
    cluster._local.clean_store(nodes[2])
    assert rayr.get(calls, timeout=90) == [2 * i for i in range(len(calls))]
    assert rayr.get(actor.where.remote(), timeout=60) != nodes[2]
