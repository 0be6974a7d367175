"""Actors end to end: real actor processes reading their mailboxes in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import rayr
from rayr.exceptions import ActorDiedError, RayActorError, RayTaskError


@rayr.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def fail(self):
        raise ValueError("method failed")

    @rayr.method(num_returns=2)
    def pair(self):
        return self.n, -self.n

    def crash(self):
        os._exit(1)

    def actor_id(self):
        return rayr.get_runtime_context().get_actor_id()


def test_create_and_call(ray):
    c = Counter.remote(10)
    assert rayr.get(c.inc.remote()) == 11
    assert rayr.get([c.inc.remote(2) for _ in range(3)]) == [13, 15, 17]
    assert rayr.get(c.get.remote()) == 17
    assert "Actor(Counter," in repr(c) and c._actor_id in repr(c)


def test_state_is_per_actor_and_in_one_process(ray):
    a, b = Counter.remote(), Counter.remote(100)
    rayr.get([a.inc.remote(), a.inc.remote()])
    assert rayr.get([a.get.remote(), b.get.remote()]) == [2, 100]
    pids = set(rayr.get([a.pid.remote() for _ in range(5)]))
    assert len(pids) == 1 and pids != set(rayr.get([b.pid.remote()]))
    assert os.getpid() not in pids


def test_num_returns(ray):
    c = Counter.remote(4)
    x, y = c.pair.remote()
    assert rayr.get([x, y]) == [4, -4]
    refs = c.inc.options(num_returns=1).remote()
    assert rayr.get(refs) == 5


def test_direct_calls_raise_type_error(ray):
    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"inc\.remote\(\)"):
        c.inc()


def test_unknown_method_raises_at_call_site(ray):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope.remote()


def test_unknown_actor_option(ray):
    with pytest.raises(ValueError, match="max_restarts"):
        Counter.options(max_restart=1)
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")


def test_unpicklable_argument_named(ray):
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"argument 0 \(lock\)"):
        c.inc.remote(threading.Lock())
    assert rayr.get(c.inc.remote()) == 1


def test_method_error_keeps_actor_serving(ray):
    c = Counter.remote()
    with pytest.raises(ValueError, match="method failed") as info:
        rayr.get(c.fail.remote())
    assert isinstance(info.value, RayTaskError)
    assert rayr.get(c.inc.remote()) == 1


def test_constructor_error_surfaces_on_every_call(ray):
    @rayr.remote
    class Broken:
        def __init__(self):
            raise ZeroDivisionError("bad init")

        def ping(self):
            return "pong"

    b = Broken.remote()
    for _ in range(2):
        with pytest.raises(ActorDiedError, match="bad init"):
            rayr.get(b.ping.remote(), timeout=30)


def test_calls_from_one_caller_run_in_order(ray):
    @rayr.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)

        def items_(self):
            return self.items

    @rayr.remote
    def slow(x):
        time.sleep(0.3)
        return x

    log = Log.remote()
    log.add.remote(slow.remote("first"))  # waits for its argument...
    log.add.remote("second")  # ...and this later call must not overtake it
    for i in range(20):
        log.add.remote(i)
    assert rayr.get(log.items_.remote()) == ["first", "second", *range(20)]


def test_handles_work_from_tasks_and_actors(ray):
    c = Counter.remote()

    @rayr.remote
    def bump(handle, times):
        return rayr.get([handle.inc.remote() for _ in range(times)])[-1]

    @rayr.remote
    class Proxy:
        def __init__(self, target):
            self.target = target

        def bump(self):
            return rayr.get(self.target.inc.remote(10))

    assert rayr.get(bump.remote(c, 3)) == 3
    assert rayr.get(Proxy.remote(c).bump.remote()) == 13
    assert rayr.get(c.get.remote()) == 13


def test_more_actors_than_cpus(ray):
    actors = [Counter.remote(i) for i in range(5)]  # 2-CPU node: actors hold 0 CPU by default
    assert rayr.get([a.get.remote() for a in actors], timeout=60) == list(range(5))


def test_actor_cpus_are_held_while_alive(ray):
    @rayr.remote(num_cpus=2)
    class Hog:
        def ping(self):
            return 1

    h = Hog.remote()
    assert rayr.get(h.ping.remote()) == 1

    @rayr.remote
    def task():
        return "ran"

    ready, _ = rayr.wait([task.remote()], timeout=1.0)
    assert ready == [], "a task ran while a 2-CPU actor held both CPUs"
    rayr.kill(h)
    assert rayr.get(task.remote(), timeout=30) == "ran"


def test_threaded_actor(ray):
    @rayr.remote(max_concurrency=3)
    class Sleeper:
        def nap(self):
            start = time.time()
            time.sleep(0.4)
            return start, time.time()

    s = Sleeper.remote()
    spans = rayr.get([s.nap.remote() for _ in range(3)])
    latest_start = max(a for a, _ in spans)
    earliest_end = min(b for _, b in spans)
    assert latest_start < earliest_end, "max_concurrency=3 calls should overlap"


def test_async_actor_interleaves_and_awaits_refs(ray):
    @rayr.remote
    def plus_one(x):
        return x + 1

    @rayr.remote
    class AsyncWorker:
        async def nap(self, i):
            await asyncio.sleep(0.3)
            return i

        async def chain(self, x):
            return await plus_one.remote(x)

        def sync_method(self):
            return "sync ok"

    w = AsyncWorker.remote()
    rayr.get(w.sync_method.remote())
    start = time.monotonic()
    assert rayr.get([w.nap.remote(i) for i in range(10)]) == list(range(10))
    assert time.monotonic() - start < 2.0, "async calls should run concurrently"
    assert rayr.get(w.chain.remote(41)) == 42
    assert rayr.get(w.sync_method.remote()) == "sync ok"


def test_named_actors_and_namespaces(ray):
    a = Counter.options(name="named-counter").remote(5)
    same = rayr.get_actor("named-counter")
    assert same == a and rayr.get(same.inc.remote()) == 6
    assert "named-counter" in rayr.util.list_named_actors()
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="named-counter").remote()
    again = Counter.options(name="named-counter", get_if_exists=True).remote()
    assert again == a
    other = Counter.options(name="named-counter", namespace="elsewhere").remote(0)
    assert other != a
    assert rayr.get(rayr.get_actor("named-counter", namespace="elsewhere").get.remote()) == 0
    listed = rayr.util.list_named_actors(all_namespaces=True)
    assert {"name": "named-counter", "namespace": "elsewhere"} in listed
    with pytest.raises(ValueError, match="no-such"):
        rayr.get_actor("no-such")
    rayr.kill(a)
    with pytest.raises(ValueError):
        rayr.get_actor("named-counter")
    rayr.kill(other)


def test_kill_fails_pending_and_later_calls(ray):
    @rayr.remote
    class Slow:
        def nap(self, s):
            time.sleep(s)
            return s

    s = Slow.remote()
    rayr.get(s.nap.remote(0))
    running = s.nap.remote(5)
    queued = s.nap.remote(0)
    time.sleep(0.3)
    rayr.kill(s)
    for ref in (running, queued, s.nap.remote(0)):
        with pytest.raises(ActorDiedError, match="killed"):
            rayr.get(ref, timeout=10)
    c = Counter.remote()
    assert rayr.get(c.inc.remote()) == 1  # nothing else was disturbed


def test_a_call_to_an_actor_that_never_existed_fails_with_the_reason(ray):
    real = Counter.remote()
    ghost = rayr.actor.ActorHandle("ab" * 16, real._class_name, real._methods, 0)
    with pytest.raises(ActorDiedError, match="does not exist"):
        rayr.get(ghost.inc.remote(), timeout=10)
    assert rayr.get(real.inc.remote()) == 1


def test_exit_actor(ray):
    @rayr.remote
    class Quitter:
        def quit(self):
            rayr.actor.exit_actor()

        def ping(self):
            return "pong"

    q = Quitter.remote()
    assert rayr.get(q.ping.remote()) == "pong"
    with pytest.raises(RayActorError, match="exit"):
        rayr.get(q.quit.remote(), timeout=10)
    with pytest.raises(ActorDiedError):
        rayr.get(q.ping.remote(), timeout=10)
    with pytest.raises(TypeError, match="inside an actor"):
        rayr.actor.exit_actor()


def test_exit_actor_of_an_async_actor_resolves_every_call_sent_meanwhile(ray):
    """exit_actor() runs off the serve loop in an async actor: the loop must not end the
    process between taking the queued calls out of the mailbox and failing them."""

    @rayr.remote
    class AsyncQuitter:
        async def quit(self):
            rayr.actor.exit_actor()

        async def ping(self):
            return "pong"

    for _ in range(5):
        q = AsyncQuitter.remote()
        assert rayr.get(q.ping.remote(), timeout=30) == "pong"
        done = q.quit.remote()
        calls = []
        while not rayr.wait([done], timeout=0)[0]:
            calls.append(q.ping.remote())
        calls += [q.ping.remote() for _ in range(20)]
        for call in calls:  # each ran before the exit or failed with it; none hangs
            try:
                assert rayr.get(call, timeout=30) == "pong"
            except ActorDiedError:
                pass


def test_restart_reruns_constructor(ray):
    c = Counter.options(max_restarts=1).remote(7)
    rayr.get(c.inc.remote())
    first_pid = rayr.get(c.pid.remote())
    with pytest.raises(ActorDiedError):
        rayr.get(c.crash.remote(), timeout=30)  # max_task_retries=0: the crashing call fails
    assert rayr.get(c.get.remote(), timeout=30) == 7  # fresh state from the constructor
    assert rayr.get(c.pid.remote()) != first_pid
    with pytest.raises(ActorDiedError):
        rayr.get(c.crash.remote(), timeout=30)
    with pytest.raises(ActorDiedError, match="no restarts left"):
        rayr.get(c.get.remote(), timeout=30)


def test_kill_with_restart_allowed_restarts(ray):
    c = Counter.options(max_restarts=1).remote(3)
    rayr.get(c.inc.remote())
    old_pid = rayr.get(c.pid.remote())
    rayr.kill(c, no_restart=False)
    deadline = time.time() + 30
    pid = old_pid
    while pid == old_pid and time.time() < deadline:  # the kill is asynchronous
        try:
            pid = rayr.get(c.pid.remote(), timeout=30)
        except ActorDiedError:  # a call that was running when the process died
            continue
    assert pid != old_pid
    assert rayr.get(c.get.remote()) == 3  # the constructor ran again


def test_max_task_retries_retries_the_crashed_call(ray, tmp_path):
    marker = tmp_path / "crashed-once"

    @rayr.remote(max_restarts=-1, max_task_retries=1)
    class Flaky:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "done on retry"

    f = Flaky.remote()
    assert rayr.get(f.work.remote(str(marker)), timeout=30) == "done on retry"


def test_runtime_context_actor_id(ray):
    c = Counter.remote()
    assert rayr.get(c.actor_id.remote()) == c._actor_id
    assert rayr.get_runtime_context().get_actor_id() is None


def test_runtime_context_fields_ray_has(ray, tmp_path):
    marker = tmp_path / "crashed-once"

    @rayr.remote(max_restarts=1, max_task_retries=1, runtime_env={"env_vars": {"RAYR_T": "1"}})
    class Probe:
        def me(self):
            return rayr.get_runtime_context().current_actor

        def crash_once(self):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            ctx = rayr.get_runtime_context()
            return (ctx.was_current_actor_reconstructed(), ctx.gcs_address,
                    json.loads(ctx.get_runtime_env_string()))

        def rebuilt(self):
            return rayr.get_runtime_context().was_current_actor_reconstructed()

    p = Probe.remote()
    assert rayr.get(p.rebuilt.remote()) is False
    handle = rayr.get(p.me.remote())
    assert handle._actor_id == p._actor_id and rayr.get(handle.rebuilt.remote()) is False
    rebuilt, gcs_address, env = rayr.get(p.crash_once.remote(), timeout=60)
    assert rebuilt is True
    assert gcs_address == rayr.get_runtime_context().gcs_address != ""
    assert env["env_vars"] == {"RAYR_T": "1"}
    with pytest.raises(RuntimeError, match="inside an actor"):
        _ = rayr.get_runtime_context().current_actor


DRIVER = textwrap.dedent(
    """
    import sys, time
    import rayr

    rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2], namespace="shared-ns")

    @rayr.remote
    class Store:
        def __init__(self):
            self.v = "kept"

        def value(self):
            return self.v

    lifetime = sys.argv[3] or None
    s = Store.options(name="store-" + sys.argv[3], lifetime=lifetime).remote()
    print(rayr.get(s.value.remote()), flush=True)
    """
)


def _driver(cluster, lifetime: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, cluster.address, cluster.name, lifetime],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_detached_actor_outlives_its_driver(ray, cluster):
    assert _driver(cluster, "detached") == "kept"
    handle = rayr.get_actor("store-detached", namespace="shared-ns")
    assert rayr.get(handle.value.remote()) == "kept"
    rayr.kill(handle)


def test_non_detached_actor_dies_with_its_driver(ray, cluster):
    assert _driver(cluster, "") == "kept"
    with pytest.raises(ValueError):
        rayr.get_actor("store-", namespace="shared-ns")


@rayr.remote
class Ledger:
    def __init__(self):
        self.entries = []

    def add(self, x):
        self.entries.append(x)
        return x

    def total_of(self, boxed_refs):
        # the refs may belong to calls read in the same batch as this one: their results
        # must go out before this call blocks on them
        return sum(rayr.get(boxed_refs[0]))


def test_a_call_waiting_on_earlier_calls_of_its_batch_does_not_deadlock(ray):
    ledger = Ledger.remote()
    rayr.get(ledger.add.remote(0))
    for _ in range(3):
        adds = [ledger.add.remote(i) for i in range(20)]
        total = ledger.total_of.remote([adds])  # nested: submitted at once, not after them
        assert rayr.get(total, timeout=30) == sum(range(20))


@rayr.remote
class Tally:
    """Counts its calls, and writes each to a file the test reads without calling it."""

    def __init__(self, path):
        self.n = 0
        self.path = path

    def inc(self, k=1):
        self.n += k
        with open(self.path, "a") as f:
            f.write("x")
        return self.n

    def get(self):
        return self.n


def test_a_burst_of_calls_to_two_actors_arrives_in_order_without_a_get(ray, tmp_path):
    """Calls made in a burst are held back and sent together; with no get or wait to push
    them, the flusher sends them, each actor's in submission order."""
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    a, b = Tally.remote(paths[0]), Tally.remote(paths[1])
    rayr.get([a.get.remote(), b.get.remote()])
    calls = [(a if i % 2 else b).inc.remote(1) for i in range(400)]
    deadline = time.monotonic() + 60
    while sum(os.path.getsize(p) for p in paths if os.path.exists(p)) < 400:
        assert time.monotonic() < deadline, "the held-back calls were never sent"
        time.sleep(0.05)
    assert rayr.get(calls[1::2], timeout=30) == list(range(1, 201))
    assert rayr.get(calls[0::2], timeout=30) == list(range(1, 201))


@rayr.remote
def short(i):
    return i


@rayr.remote
def gather(boxed_refs):
    return sum(rayr.get(boxed_refs[0]))


def test_a_leased_batch_task_waiting_on_its_batch_mates_does_not_deadlock(ray):
    rayr.get([short.remote(i) for i in range(200)])  # leases ramp up to batched reads
    for _ in range(3):
        refs = [short.remote(i) for i in range(50)]
        sums = [gather.remote([refs]) for _ in range(4)]
        assert rayr.get(sums, timeout=60) == [sum(range(50))] * 4


def test_every_actor_answers_ray_ready(ray):
    @rayr.remote
    class Plain:
        def __init__(self):
            time.sleep(0.2)

    @rayr.remote
    class Async:
        async def go(self):
            return 1

    @rayr.remote
    class Own:
        def __ray_ready__(self):  # a class's own method of that name wins
            return "mine"

    assert rayr.get(Plain.remote().__ray_ready__.remote()) is True
    assert rayr.get(Async.remote().__ray_ready__.remote()) is True
    assert rayr.get(Own.remote().__ray_ready__.remote()) == "mine"


def test_ray_raylet_import_paths():
    from rayr._raylet import ObjectRef, ObjectRefGenerator, StreamingObjectRefGenerator

    assert ObjectRef is rayr.ObjectRef and ObjectRefGenerator is rayr.ObjectRefGenerator
    assert StreamingObjectRefGenerator is ObjectRefGenerator


def test_concurrency_groups_limit_each_group_on_its_own(ray):
    @rayr.remote(concurrency_groups={"io": 2})
    class Gate:
        def __init__(self):
            self.lock = threading.Lock()
            self.gate = threading.Event()
            self.active = self.peak = 0

        @rayr.method(concurrency_group="io")
        def enter(self):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            self.gate.wait(60)
            with self.lock:
                self.active -= 1
            return "out"

        def now(self):  # the default group: runs while the io group is full
            return self.active

        def release(self):
            self.gate.set()

        def peak_seen(self):
            return self.peak

    gate = Gate.remote()
    calls = [gate.enter.remote() for _ in range(4)]
    deadline = time.time() + 60
    while rayr.get(gate.now.remote()) < 2:
        assert time.time() < deadline, "the io group never ran two calls at once"
        time.sleep(0.05)
    assert rayr.get(gate.now.remote()) == 2  # two of four: the group's size
    rayr.get(gate.release.remote())
    assert rayr.get(calls) == ["out"] * 4
    assert rayr.get(gate.peak_seen.remote()) == 2


def test_async_concurrency_groups(ray):
    @rayr.remote(concurrency_groups={"io": 1, "compute": 3})
    class AsyncGate:
        def __init__(self):
            self.gate = asyncio.Event()
            self.active = {"io": 0, "compute": 0}
            self.peak = {"io": 0, "compute": 0}

        async def _enter(self, group):
            self.active[group] += 1
            self.peak[group] = max(self.peak[group], self.active[group])
            await self.gate.wait()
            self.active[group] -= 1

        @rayr.method(concurrency_group="io")
        async def io(self):
            await self._enter("io")

        @rayr.method(concurrency_group="compute")
        async def compute(self):
            await self._enter("compute")

        async def now(self):
            return dict(self.active)

        async def release(self):
            self.gate.set()
            return dict(self.peak)

    actor = AsyncGate.remote()
    calls = [actor.io.remote() for _ in range(3)] + [actor.compute.remote() for _ in range(5)]
    deadline = time.time() + 60
    while rayr.get(actor.now.remote()) != {"io": 1, "compute": 3}:
        assert time.time() < deadline, rayr.get(actor.now.remote())
        time.sleep(0.05)
    assert rayr.get(actor.release.remote()) == {"io": 1, "compute": 3}
    rayr.get(calls)


def test_a_group_the_actor_lacks_and_bad_method_options_are_refused(ray):
    @rayr.remote
    class NoGroups:
        @rayr.method(concurrency_group="io")
        def f(self):
            return 1

    with pytest.raises(ValueError, match="concurrency group 'io', which the actor does not define"):
        NoGroups.remote()
    with pytest.raises(ValueError, match="concurrency_groups must map"):
        NoGroups.options(concurrency_groups={"io": 0}).remote()
    with pytest.raises(ValueError, match="Invalid option"):
        rayr.method(colour="blue")
    with pytest.warns(UserWarning, match="tensor_transport=...\\) has no effect"):
        rayr.method(tensor_transport="nccl")


def test_method_retry_options(ray):
    @rayr.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        @rayr.method(max_task_retries=2, retry_exceptions=[ValueError])
        def shaky(self):
            self.calls += 1
            if self.calls < 3:
                raise ValueError("not yet")
            return self.calls

        def plain(self):
            raise ValueError("never retried")

    flaky = Flaky.remote()
    assert rayr.get(flaky.shaky.remote()) == 3
    with pytest.raises(ValueError, match="never retried"):
        rayr.get(flaky.plain.remote())
    # the same at call time
    with pytest.raises(ValueError, match="never retried"):
        rayr.get(flaky.plain.options(max_task_retries=3, retry_exceptions=[KeyError]).remote())


def test_a_call_names_its_concurrency_group(ray):
    @rayr.remote(concurrency_groups={"io": 1})
    class Threads:
        def thread(self):
            return threading.current_thread().name

        @rayr.method(concurrency_group="io")
        def io_thread(self):
            return threading.current_thread().name

    t = Threads.remote()
    assert rayr.get(t.thread.remote()).startswith("rayr-actor_")  # the default group's pool
    assert rayr.get(t.thread.options(concurrency_group="io").remote()).startswith("rayr-actor-io")
    assert rayr.get(t.io_thread.remote()).startswith("rayr-actor-io")
    with pytest.raises(ValueError, match="has no such group"):
        rayr.get(t.thread.options(concurrency_group="gpu").remote())
    with pytest.raises(ValueError, match="concurrency_group must be"):
        t.thread.options(concurrency_group="")
