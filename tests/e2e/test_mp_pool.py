"""rayr.util.multiprocessing.Pool end to end: the stdlib Pool API on real actor processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest

import rayr
from rayr.exceptions import RayActorError
from rayr.util.multiprocessing import Pool


class PoolTestError(Exception):
    """A user exception class the pool must hand back as itself."""


def square(x):
    return x * x


def add(a, b, c=0):
    return a + b + c


def sleepy(seconds, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


def fail_on_3(x):
    if x == 3:
        raise PoolTestError(f"bad item {x}")
    return x


def crash_on_1(x):
    if x == 1:
        os._exit(3)
    return x


def failing_init():
    raise PoolTestError("init broke")


def pid(_=None):
    return os.getpid()


_WORKER_STATE = None
_INIT_CALLS = 0


def init_worker(tag):
    global _WORKER_STATE, _INIT_CALLS
    _INIT_CALLS += 1
    _WORKER_STATE = (tag, os.getpid())


def read_worker_state(_):
    return _WORKER_STATE, _INIT_CALLS, os.getpid()


@pytest.fixture(scope="module")
def pool(cluster) -> Iterator[Pool]:
    """One 2-process pool shared by the tests that do not stop it."""
    p = Pool(2)
    yield p
    p.terminate()


def _alive(pid_: int) -> bool:
    try:
        return psutil.Process(pid_).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: set[int], timeout: float = 10.0) -> bool:
    """Whether every process in ``pids`` exits within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_pool_reuses_the_connection_and_defaults_to_cluster_cpus(ray):
    job = rayr.get_runtime_context().get_job_id()
    p = Pool()
    try:
        assert "processes=2" in repr(p) and "state=RUN" in repr(p)
        assert rayr.get_runtime_context().get_job_id() == job
        assert p.apply(square, (7,)) == 49
    finally:
        p.terminate()
    assert "state=TERMINATE" in repr(p)


def test_bad_arguments(ray, pool):
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.imap(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_map_and_starmap_keep_input_order(ray, pool):
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
    assert pool.map(square, iter(range(5)), chunksize=1) == [0, 1, 4, 9, 16]
    assert pool.map(square, []) == []
    assert pool.starmap(add, [(1, 2), (3, 4, 5), (6, 7)]) == [3, 12, 13]
    assert pool.starmap(add, [(i, i) for i in range(9)], chunksize=4) == [2 * i for i in range(9)]


def test_map_uses_every_process(ray, pool):
    assert len(set(pool.map(pid, range(8), chunksize=1))) == 2


def test_map_async_and_starmap_async_callbacks(ray, pool):
    got: list = []
    r = pool.map_async(square, range(10), callback=got.append)
    assert r.get(timeout=30) == [x * x for x in range(10)]
    assert got == [[x * x for x in range(10)]]
    assert r.ready() and r.successful()

    done = threading.Event()
    results: list = []
    r2 = pool.starmap_async(add, [(1, 1), (2, 2)], callback=lambda v: (results.append(v), done.set()))
    # nobody calls get(): the pool's own watcher must deliver the callback
    assert done.wait(30)
    assert results == [[2, 4]] and r2.get() == [2, 4]


def test_apply_and_apply_async(ray, pool):
    assert pool.apply(add, (1, 2)) == 3
    assert pool.apply(add, (1, 2), {"c": 10}) == 13
    got: list = []
    r = pool.apply_async(add, (2, 3), {"c": 1}, callback=got.append)
    r.wait(timeout=30)
    assert r.ready() and r.successful()
    assert r.get() == 6 and got == [6]


def test_async_result_timeout_and_not_ready(ray, pool):
    r = pool.apply_async(sleepy, (0.6, "late"))
    assert not r.ready()
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(TimeoutError):  # also the builtin, like rayr's GetTimeoutError
        r.get(timeout=0.05)
    r.wait(timeout=0.05)
    assert not r.ready()
    assert r.get(timeout=30) == "late" and r.successful()


def test_imap_is_ordered_and_imap_unordered_is_not(ray, pool):
    items = [0.8, 0.0, 0.0, 0.0, 0.0, 0.0]
    tagged = [(s, i) for i, s in enumerate(items)]
    assert list(pool.imap(square, range(10))) == [x * x for x in range(10)]
    assert list(pool.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert list(pool.imap(sleepy, items)) == items

    out = list(pool.imap_unordered(_sleepy_pair, tagged))
    assert sorted(out) == list(range(6))
    assert out[0] != 0 and out != list(range(6))  # the slow first item did not hold the others back
    assert sorted(pool.imap_unordered(square, range(10), chunksize=4)) == sorted(x * x for x in range(10))
    assert list(pool.imap(square, [])) == []


def _sleepy_pair(pair):
    seconds, index = pair
    time.sleep(seconds)
    return index


def test_imap_next_timeout_and_lazy_iterable(ray, pool):
    it = pool.imap(sleepy, [0.6, 0.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=30) == 0.6
    assert list(it) == [0.0]

    def endless():
        n = 0
        while True:
            yield n
            n += 1

    # an endless iterable works: chunks are submitted a bounded distance ahead
    it2 = pool.imap(square, endless())
    assert [next(it2) for _ in range(25)] == [x * x for x in range(25)]


def test_initializer_runs_once_in_each_process(ray):
    with Pool(2, initializer=init_worker, initargs=("tagged",)) as p:
        seen = p.map(read_worker_state, range(20), chunksize=1)
    pids = {actual for _, _, actual in seen}
    assert len(pids) == 2
    for state, calls, actual in seen:
        assert state == ("tagged", actual)  # set by the initializer in this very process
        assert calls == 1  # once per process, not per task
    assert _WORKER_STATE is None  # nothing ran in the driver


def test_initializer_error_reaches_the_caller(ray):
    with Pool(1, initializer=failing_init) as p, pytest.raises(RayActorError, match="init broke"):
        p.map(square, range(3))


def test_a_dead_process_is_replaced(ray):
    with Pool(2, initializer=init_worker, initargs=("again",)) as p:
        with pytest.raises(RayActorError):
            p.map(crash_on_1, range(4), chunksize=1)
        seen = p.map(read_worker_state, range(8), chunksize=1)
    assert len({actual for _, _, actual in seen}) == 2
    for state, calls, actual in seen:
        assert state == ("again", actual) and calls == 1  # the replacement ran the initializer


MAIN_SOURCE = """
import os
FACTOR = 1
_STATE = None

def init(tag):
    global _STATE
    _STATE = (tag, os.getpid())

def helper():
    return _STATE

def work(x):
    return helper(), FACTOR * x
"""


def test_initializer_globals_of_main_module_functions(ray):
    # functions of __main__ are pickled by value, each with its own copy of the globals;
    # the pool process must still give the initializer and the work one module namespace
    ns: dict = {"__name__": "__main__"}
    exec(MAIN_SOURCE, ns)
    with Pool(2, initializer=ns["init"], initargs=("main",)) as p:
        first = p.map(ns["work"], range(6), chunksize=1)
        ns["FACTOR"] = 10  # a driver-side change reaches the processes, as in Ray
        second = p.map(ns["work"], range(6), chunksize=1)
    assert [v for _, v in first] == list(range(6))
    assert [v for _, v in second] == [10 * x for x in range(6)]
    for state, _ in first + second:
        assert state is not None and state[0] == "main"
    assert len({state[1] for state, _ in first}) == 2


def test_exceptions_propagate_with_their_class(ray, pool):
    with pytest.raises(PoolTestError, match="bad item 3"):
        pool.map(fail_on_3, range(6))
    with pytest.raises(PoolTestError, match="bad item 3"):
        pool.starmap(fail_on_3, [(i,) for i in range(6)], chunksize=2)
    with pytest.raises(PoolTestError):
        pool.apply(fail_on_3, (3,))
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))
    r = pool.map_async(fail_on_3, range(6))
    with pytest.raises(PoolTestError):
        r.get(timeout=30)
    assert r.ready() and not r.successful()

    it = pool.imap(fail_on_3, range(6))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(PoolTestError):
        next(it)
    assert list(it) == [4, 5]  # with chunksize=1 the failure costs one item only


def test_error_callback(ray, pool):
    errors: list = []
    values: list = []
    done = threading.Event()

    def on_error(err):
        errors.append(err)
        done.set()

    r = pool.apply_async(fail_on_3, (3,), callback=values.append, error_callback=on_error)
    assert done.wait(30)  # delivered without anyone calling get()
    assert values == [] and len(errors) == 1
    assert isinstance(errors[0], PoolTestError) and "bad item 3" in str(errors[0])
    assert not r.successful()

    map_errors: list = []
    r2 = pool.map_async(fail_on_3, range(5), error_callback=map_errors.append)
    with pytest.raises(PoolTestError):
        r2.get(timeout=30)
    assert len(map_errors) == 1 and isinstance(map_errors[0], PoolTestError)


def test_unpicklable_function_raises_type_error_at_submission(ray, pool):
    lock = threading.Lock()
    holds_lock = lambda x: (lock, x)  # noqa: E731
    for submit in (
        lambda: pool.map(holds_lock, [1]),
        lambda: pool.apply_async(holds_lock, (1,)),
        lambda: pool.imap(holds_lock, [1]),
        lambda: pool.starmap_async(holds_lock, [(1,)]),
    ):
        with pytest.raises(TypeError, match="<lambda>"):
            submit()
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=holds_lock)
    assert pool.map(square, [3]) == [9]  # the pool is unaffected


def test_close_then_join(ray):
    p = Pool(2)
    pids = set(p.map(pid, range(4), chunksize=1))
    late: list = []
    r = p.map_async(sleepy, [0.3, 0.3, 0.3], chunksize=1, callback=late.append)
    p.close()
    p.close()  # harmless twice
    for call in (
        lambda: p.map(square, [1]),
        lambda: p.map_async(square, [1]),
        lambda: p.starmap(add, [(1, 2)]),
        lambda: p.apply(square, (1,)),
        lambda: p.apply_async(square, (1,)),
        lambda: p.imap(square, [1]),
        lambda: p.imap_unordered(square, [1]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    p.join()
    # work submitted before close() finished, and its callback ran before join() returned
    assert late == [[0.3, 0.3, 0.3]] and r.get(timeout=0) == [0.3, 0.3, 0.3]
    assert wait_gone(pids), "join() left the pool processes running"


def test_context_manager_terminates(ray):
    with Pool(2) as p:
        assert p.map(square, range(4)) == [0, 1, 4, 9]
        pids = set(p.map(pid, range(4), chunksize=1))
        long_call = p.apply_async(sleepy, (30,))
    # __exit__ terminates, as the stdlib does: the running call fails instead of hanging
    with pytest.raises(RayActorError):
        long_call.get(timeout=20)
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, [1])
    assert wait_gone(pids), "terminate() left the pool processes running"
    p.join()  # allowed after terminate


def test_maxtasksperchild_replaces_processes(ray):
    with Pool(1, maxtasksperchild=2) as p:
        pids = p.map(pid, range(6), chunksize=1)
        counts = Counter(pids)
        assert len(counts) == 3 and set(counts.values()) == {2}
        assert pids == sorted(pids, key=pids.index)  # each process ran consecutive items
        assert p.apply(square, (5,)) == 25
    assert wait_gone(set(pids)), "retired pool processes were left running"
