"""The raylet's scheduling state machine, without any I/O."""

from __future__ import annotations

import time

from rayr import resources as res
from rayr.raylet.scheduler import QueuedTask, Scheduler


def task(shape: str, n: int = 0) -> QueuedTask:
    return QueuedTask("stream", str(n).encode(), b"spec", shape, res.parse_shape(shape))


def test_shape_keys_roundtrip():
    assert res.shape_key({"CPU": 1.0, "GPU": 0.5}) == "CPU=1,GPU=0.5"
    assert res.shape_key({"GPU": 0.5, "CPU": 1}) == "CPU=1,GPU=0.5"
    assert res.shape_key({}) == res.shape_key({"CPU": 0}) == "none"
    assert res.parse_shape("CPU=1,GPU=0.5") == {"CPU": 1.0, "GPU": 0.5}
    assert res.parse_shape("none") == {}
    # a nested task's stream, shared or targeted at a node, in a runtime env
    for key in ("^CPU=1", "~^CPU=1", "^CPU=1|env=ab12"):
        assert res.parse_shape(key) == {"CPU": 1.0} and res.is_nested(key), key
    assert not res.is_nested("CPU=1") and not res.is_nested("~@CPU=1")


def test_budget_follows_free_resources():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8)
    assert s.add_shapes({"CPU=1", "CPU=2", "CPU=4"})
    assert s.shapes == {"CPU=1", "CPU=2"}  # a node never reads shapes it can never fit
    assert s.read_budget() == {"CPU=1": 2, "CPU=2": 1}
    s.on_tasks([task("CPU=1")])
    assert s.read_budget() == {"CPU=1": 1}
    s.on_tasks([task("CPU=1", 1)])
    assert s.read_budget() == {}


def test_tasks_read_but_not_yet_queued_count_against_the_budget():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8)
    s.add_shapes({"CPU=1", "none"})
    s.on_tasks([task("CPU=1")])
    # a second task is on its way from the reader thread: nothing more fits
    in_transit = [task("CPU=1", 1)]
    assert s.read_budget(in_transit) == {"none": 6}
    assert s.available == {"CPU": 1.0}, "the budget must not reserve anything itself"
    assert s.read_budget() == {"CPU=1": 1, "none": 7}


def test_overflow_waits_and_blocks_reading():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8)
    s.add_shapes({"CPU=2"})
    s.on_tasks([task("CPU=2", 1), task("CPU=2", 2)])
    assert len(s.ready) == 1 and len(s.overflow) == 1
    assert s.read_budget() == {}
    s.on_worker_ready("w1")
    (d,) = s.dispatches()
    assert d.worker == "w1" and d.task.entry_id == b"1"
    s.on_task_done("w1")
    assert len(s.ready) == 1 and not s.overflow  # the overflow got the freed CPUs


def test_workers_to_start_is_bounded():
    s = Scheduler(total={"CPU": 2.0}, max_workers=3)
    s.add_shapes({"CPU=1"})
    s.on_tasks([task("CPU=1", i) for i in range(2)])
    assert s.workers_to_start() == 2
    s.on_worker_started()
    s.on_worker_started()
    assert s.workers_to_start() == 0  # two are already starting for two tasks



def test_blocked_workers_do_not_count_against_the_worker_cap():
    # two parents, each blocked in get() on a child: the cap of 2 must not stop a third worker
    s = Scheduler(total={"CPU": 2.0}, max_workers=2)
    s.add_shapes({"CPU=1"})
    s.on_worker_ready("p1")
    s.on_worker_ready("p2")
    s.on_tasks([task("CPU=1", 1), task("CPU=1", 2)])
    assert len(s.dispatches()) == 2
    s.on_worker_blocked("p1")
    s.on_worker_blocked("p2")
    s.on_tasks([task("CPU=1", 3)])
    assert s.workers_to_start() == 1
    s.on_worker_unblocked("p1")
    s.on_worker_unblocked("p2")
    assert s.workers_to_start() == 0  # both run again: the cap is reached once more

def test_blocked_worker_gives_back_its_cpu():
    s = Scheduler(total={"CPU": 1.0}, max_workers=4)
    s.add_shapes({"CPU=1"})
    s.on_worker_ready("parent")
    s.on_tasks([task("CPU=1", 1)])
    s.dispatches()
    assert s.read_budget() == {}
    s.on_worker_blocked("parent")
    assert s.read_budget() == {"CPU=1": 1}
    s.on_tasks([task("CPU=1", 2)])
    s.on_worker_ready("child")
    (d,) = s.dispatches()
    assert d.worker == "child"
    s.on_worker_unblocked("parent")
    assert s.available["CPU"] == -1.0  # briefly oversubscribed, so nothing more is read
    assert s.read_budget() == {}
    s.on_task_done("child")
    s.on_task_done("parent")
    assert s.available["CPU"] == 1.0


def test_finishing_while_blocked_does_not_double_release():
    s = Scheduler(total={"CPU": 1.0}, max_workers=4)
    s.add_shapes({"CPU=1"})
    s.on_worker_ready("w")
    s.on_tasks([task("CPU=1")])
    s.dispatches()
    s.on_worker_blocked("w")
    s.on_task_done("w")
    assert s.available["CPU"] == 1.0


def test_dead_worker_returns_its_task_and_resources():
    s = Scheduler(total={"CPU": 1.0}, max_workers=4)
    s.add_shapes({"CPU=1"})
    s.on_worker_ready("w")
    s.on_tasks([task("CPU=1", 7)])
    s.dispatches()
    lost = s.on_worker_died("w")
    assert lost is not None and lost.entry_id == b"7"
    assert s.available["CPU"] == 1.0 and "w" not in s.live


def test_zero_resource_shape_bounded_by_workers():
    s = Scheduler(total={"CPU": 1.0}, max_workers=2)
    s.add_shapes({"none"})
    assert s.read_budget() == {"none": 2}


def test_prefetch_reads_ahead_while_busy():
    s = Scheduler(total={"CPU": 1.0}, max_workers=4, prefetch=2)
    s.add_shapes({"CPU=1"})
    assert s.read_budget() == {"CPU=1": 3}  # one that fits now, two to have ready next
    s.on_worker_ready("w")
    s.on_tasks([task("CPU=1", i) for i in range(3)])
    assert len(s.ready) == 1 and len(s.overflow) == 2
    assert s.read_budget() == {}  # the prefetch is full
    s.dispatches()
    s.on_task_done("w")
    assert len(s.ready) == 1 and len(s.overflow) == 1  # the next one is ready at once
    assert s.read_budget() == {"CPU=1": 1}


def test_actor_creation_shapes_parse_like_task_shapes():
    assert res.parse_shape("@CPU=1") == {"CPU": 1.0}
    assert res.parse_shape("@none") == {}


def test_bundles_carve_out_renamed_resources():
    s = Scheduler(total={"CPU": 4.0}, max_workers=8)
    s.add_shapes({"CPU_group_0_pg1=1", "CPU=1"})
    assert s.shapes == {"CPU=1"}  # the group's resources do not exist yet
    assert s.reserve_bundles("pg1", [(0, {"CPU": 2.0})])
    assert s.available["CPU"] == 2.0
    assert s.total["CPU_group_0_pg1"] == 2.0 and s.available["CPU_group_pg1"] == 2.0
    assert "CPU_group_0_pg1=1" in s.shapes
    assert not s.reserve_bundles("pg2", [(0, {"CPU": 3.0})])  # does not fit: nothing changes
    assert s.available["CPU"] == 2.0 and "pg2" not in s.bundles
    assert s.total["bundle_group_0_pg1"] == 1000.0
    s.release_bundles("pg1")
    assert s.available == {"CPU": 4.0} and s.total == {"CPU": 4.0}
    assert s.shapes == {"CPU=1"}


def test_long_idle_workers_beyond_the_pool_are_retired():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8, min_pool=2)
    for w in ("w1", "w2", "w3", "w4"):
        s.on_worker_ready(w)
    now = time.monotonic()
    assert s.plan_workers(now) == ({}, []), "nobody has been idle long enough yet"
    s.idle_since["w1"] = s.idle_since["w2"] = s.idle_since["w3"] = now - 5
    plan, retire = s.plan_workers(now)
    assert plan == {} and retire == ["w1", "w2"]  # the longest idle; the pool of 2 stays
    assert s.idle == ["w3", "w4"] and s.live == {"w3", "w4"}
    assert s.plan_workers(now) == ({}, [])


def test_actor_creations_go_ahead_of_queued_plain_tasks():
    s = Scheduler(total={"CPU": 1.0}, max_workers=8)
    s.add_shapes({"CPU=1", "@CPU=1"})
    s.on_tasks([task("CPU=1", i) for i in range(3)])  # one runs, two wait
    first = QueuedTask("creations", b"a1", b"spec", "@CPU=1", {"CPU": 1.0}, actor="a1")
    second = QueuedTask("creations", b"a2", b"spec", "@CPU=1", {"CPU": 1.0}, actor="a2")
    s.on_tasks([first])
    s.on_tasks([task("CPU=1", 3), second])
    # creations in their order, then the plain tasks in theirs
    assert [t.entry_id for t in s.overflow] == [b"a1", b"a2", b"1", b"2", b"3"]


def test_a_zero_cpu_shape_is_read_no_faster_than_workers_can_take_it():
    # a sliver of a custom resource fits a thousand times: reading it all would leave every
    # task to be dispatched one by one, while leased workers could take them from the stream
    s = Scheduler(total={"CPU": 2.0, "later": 1000.0}, max_workers=8)
    s.add_shapes({"later=0.001", "@later=0.001"})
    assert s.read_budget() == {"later=0.001": 8, "@later=0.001": 64}  # creations keep their pace
    s.on_tasks([task("later=0.001", i) for i in range(8)])
    for i in range(8):
        s.on_worker_ready(f"w{i}")
    s.dispatches()
    assert s.read_budget().get("later=0.001", 0) == 0
    s.on_worker_blocked("w0")  # a parent waiting on children lends its slot
    s.on_worker_blocked("w1")
    assert s.read_budget()["later=0.001"] == 2


def test_streams_left_to_leased_workers():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8)
    s.add_shapes({"CPU=1"})
    s.on_tasks([QueuedTask("s1", b"1", b"spec", "CPU=1", {"CPU": 1.0})])
    # read and reserved: the worker it goes to will wait on s1 for the next one
    assert s.leased_streams() == {"s1"}
    assert s.leased_streams([QueuedTask("s2", b"2", b"spec", "CPU=1", {"CPU": 1.0})]) == {"s1", "s2"}
    s.on_worker_ready("w1")
    s.dispatches()
    assert s.leased_streams() == {"s1"}
    s.on_worker_blocked("w1")  # in get(): it is not waiting on its stream
    assert s.leased_streams() == set()
    s.on_worker_unblocked("w1")
    assert s.leased_streams() == {"s1"}
    s.on_task_done("w1")  # the lease ended
    assert s.leased_streams() == set()
    creation = QueuedTask("s3", b"3", b"spec", "@CPU=1", {"CPU": 1.0}, actor="a" * 32)
    s.on_tasks([creation])
    assert s.leased_streams() == set(), "an actor's worker never reads a task stream"
