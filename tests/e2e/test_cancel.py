"""rayr.cancel for queued, running, forced, recursive and actor tasks."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import rayr
from rayr.exceptions import RayTaskError, TaskCancelledError


@rayr.remote
def sleeper(seconds, marker=None):
    if marker:
        with open(marker, "a") as f:
            f.write("started\n")
    time.sleep(seconds)
    return seconds


def _wait_for(path, timeout=20.0):
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)
    assert os.path.exists(path), f"{path} never appeared"


def test_cancel_queued_task_never_runs(ray, tmp_path):
    blockers = [sleeper.options(num_cpus=2).remote(1.0)]  # occupy the whole node
    marker = tmp_path / "queued-ran"
    queued = sleeper.options(num_cpus=2).remote(0, str(marker))
    rayr.cancel(queued)
    with pytest.raises(TaskCancelledError) as caught:
        rayr.get(queued, timeout=20)
    assert not isinstance(caught.value, RayTaskError)  # it never ran: Ray raises it alone
    rayr.get(blockers)
    time.sleep(0.3)
    assert not marker.exists(), "a cancelled queued task ran anyway"


def test_cancel_task_waiting_for_dependencies(ray):
    dep = sleeper.remote(1.0)

    @rayr.remote
    def after(x):
        return x

    ref = after.remote(dep)
    rayr.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rayr.get(ref, timeout=20)
    assert rayr.get(dep) == 1.0


def test_cancel_running_task_interrupts_it(ray, tmp_path):
    marker = tmp_path / "started"
    ref = sleeper.remote(30, str(marker))
    _wait_for(marker)
    start = time.monotonic()
    rayr.cancel(ref)
    with pytest.raises(TaskCancelledError) as caught:
        rayr.get(ref, timeout=20)
    assert time.monotonic() - start < 10
    # interrupted while running: a RayTaskError too, as in Ray, naming the task
    assert isinstance(caught.value, RayTaskError) and caught.value.task_id == ref.task_id().hex()
    assert rayr.get(sleeper.remote(0)) == 0  # the worker survived and serves on


def test_a_task_cancelled_as_soon_as_it_is_submitted_is_cancelled(ray):
    # the cancel may find the task queued, on its way to a worker, just handed to one that
    # has not started it yet (the cancel used to be lost there, and the task ran its full
    # 60 s), or running: in every case get() raises TaskCancelledError at once
    for _ in range(5):
        ref = sleeper.remote(60)
        rayr.cancel(ref)
        with pytest.raises(TaskCancelledError):
            rayr.get(ref, timeout=30)
    assert rayr.get(sleeper.remote(0), timeout=30) == 0


def test_force_cancel_kills_the_worker_and_is_not_retried(ray, tmp_path):
    marker = tmp_path / "started"

    @rayr.remote(max_retries=3)
    def stubborn(path):
        with open(path, "a") as f:
            f.write("x")
        try:
            time.sleep(30)
        except KeyboardInterrupt:  # ignores polite cancellation
            time.sleep(30)
        return os.getpid()

    ref = stubborn.remote(str(marker))
    _wait_for(marker)
    rayr.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        rayr.get(ref, timeout=20)
    time.sleep(0.5)
    assert marker.read_text() == "x", "a force-cancelled task was retried"


def test_recursive_cancel_reaches_children(ray, tmp_path):
    child_marker = tmp_path / "child"

    @rayr.remote(num_cpus=0)
    def parent(path):
        child = sleeper.options(num_cpus=0).remote(30, path)
        return rayr.get(child)

    ref = parent.remote(str(child_marker))
    _wait_for(child_marker)
    rayr.cancel(ref, recursive=True)
    with pytest.raises(TaskCancelledError):
        rayr.get(ref, timeout=20)
    # the child was cancelled too: both CPUs are free again promptly
    assert rayr.get([sleeper.remote(0), sleeper.remote(0)], timeout=10) == [0, 0]


def test_cancel_finished_task_is_a_no_op(ray):
    ref = sleeper.remote(0)
    assert rayr.get(ref) == 0
    rayr.cancel(ref)
    assert rayr.get(ref) == 0


def test_cancel_bad_input(ray):
    with pytest.raises(TypeError, match="put"):
        rayr.cancel(rayr.put(1))
    with pytest.raises(TypeError):
        rayr.cancel("not a ref")


@rayr.remote
class Worker:
    def __init__(self):
        self.seen = []

    def nap(self, seconds, tag):
        self.seen.append(tag)
        deadline = time.time() + seconds
        while time.time() < deadline:
            if rayr.get_runtime_context().is_canceled():
                return "noticed"
            time.sleep(0.02)
        return tag

    def tags(self):
        return self.seen


def test_cancel_queued_actor_call_is_not_executed(ray):
    w = Worker.remote()
    rayr.get(w.tags.remote())
    first = w.nap.remote(1.0, "first")
    second = w.nap.remote(0, "second")
    rayr.cancel(second)
    with pytest.raises(TaskCancelledError):
        rayr.get(second, timeout=20)
    assert rayr.get(first) == "first"
    assert rayr.get(w.tags.remote()) == ["first"]


@rayr.remote
class Gated:
    """Calls that wait for a file, so a test controls which calls the actor reads together."""

    def __init__(self):
        self.ran = []

    def gated(self, tag, started, gate):
        open(started, "w").close()
        _wait_for(gate)
        self.ran.append(tag)
        return tag

    def quick(self, tag):
        self.ran.append(tag)
        return tag

    def tags(self):
        return self.ran


def test_cancel_of_a_call_read_in_the_same_batch_as_a_slow_one(ray, tmp_path):
    w = Gated.remote()
    files = {name: str(tmp_path / name) for name in ("s0", "g0", "s1", "g1")}
    zero = w.gated.remote("zero", files["s0"], files["g0"])
    _wait_for(files["s0"])
    # queued while "zero" runs: the actor reads both at once when it is done
    first = w.gated.remote("first", files["s1"], files["g1"])
    second = w.quick.remote("second")
    rayr.wait([first, second], timeout=0.1)  # sent before the gate opens
    open(files["g0"], "w").close()
    _wait_for(files["s1"])
    rayr.cancel(second)  # taken out of the mailbox already, queued behind "first"
    open(files["g1"], "w").close()
    with pytest.raises(TaskCancelledError):
        rayr.get(second, timeout=20)
    assert rayr.get([zero, first]) == ["zero", "first"]
    assert rayr.get(w.tags.remote()) == ["zero", "first"]


def test_cancel_running_sync_actor_call_sets_flag(ray):
    w = Worker.remote()
    rayr.get(w.tags.remote())
    ref = w.nap.remote(20, "long")
    time.sleep(0.5)
    rayr.cancel(ref)
    with pytest.raises(TaskCancelledError):
        rayr.get(ref, timeout=20)
    assert rayr.get(w.tags.remote(), timeout=10) == ["long"]  # the method returned early


def test_cancel_running_async_actor_call(ray):
    @rayr.remote
    class Async:
        async def nap(self):
            await asyncio.sleep(30)

        async def ping(self):
            return "pong"

    a = Async.remote()
    rayr.get(a.ping.remote())
    ref = a.nap.remote()
    time.sleep(0.3)
    rayr.cancel(ref)
    # as in Ray: caught as RayTaskError (it was running) and as TaskCancelledError
    with pytest.raises(RayTaskError) as caught:
        rayr.get(ref, timeout=10)
    assert isinstance(caught.value, TaskCancelledError)
    assert rayr.get(a.ping.remote()) == "pong"


def test_force_cancel_of_actor_call_is_refused(ray):
    w = Worker.remote()
    ref = w.nap.remote(0.5, "x")
    with pytest.raises(ValueError, match="force"):
        rayr.cancel(ref, force=True)
    assert rayr.get(ref) == "x"


def test_a_cancel_read_with_a_delivery_reaches_the_actor(redis_url):
    """A sync actor reads its control stream along with each delivery, through the command
    stream, whose raw replies are RESP3 maps under redis-py 8: the cancel must be seen."""
    from rayr.gcs.client import GcsClient, connect
    from rayr.gcs.command_stream import CommandStream
    from rayr.keys import ACTOR_GROUP, Keys
    from rayr.worker.actor_runtime import ActorRuntime

    gcs = GcsClient(connect(redis_url), Keys(f"ctl-{os.urandom(4).hex()}"))
    control = gcs.keys.actor_control("ab" * 16)
    gcs.r.xgroup_create(control, ACTOR_GROUP, id="0", mkstream=True)
    task_id = os.urandom(16)
    gcs.r.xadd(control, {b"cancel": task_id.hex().encode()})

    class Executor:
        cancelled_tasks: set[bytes] = set()

    runtime = ActorRuntime.__new__(ActorRuntime)
    runtime.gcs, runtime.control, runtime.consumer, runtime.actor_id = gcs, control, "c", "ab" * 16
    runtime.executor, runtime._async_calls = Executor(), {}
    commands = CommandStream(redis_url, None)
    replies: list = []
    try:
        commands.send([runtime._read_control()], replies.extend)
        commands.flush(timeout=10)
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            time.sleep(0.01)
        runtime._on_control_reply(replies[0])
    finally:
        commands.close()
        gcs.r.delete(control)
    assert Executor.cancelled_tasks == {task_id}
