"""Remote functions end to end: real raylet, real workers, real Redis."""

from __future__ import annotations

import itertools
import os
import time

import pytest

import rayr
from rayr.exceptions import RayTaskError, WorkerCrashedError


@rayr.remote
def square(x):
    return x * x


@rayr.remote
def add(a, b=0, *, c=0):
    return a + b + c


def test_remote_returns_ref_and_value(ray):
    ref = square.remote(7)
    assert isinstance(ref, rayr.ObjectRef)
    assert rayr.get(ref) == 49
    assert rayr.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]


def test_kwargs_and_defaults(ray):
    assert rayr.get(add.remote(1, 2, c=3)) == 6
    assert rayr.get(add.remote(a=5)) == 5


def test_calling_directly_raises_type_error(ray):
    with pytest.raises(TypeError, match=r"square\.remote\(\)"):
        square(3)


def test_decorator_with_options_and_options_copy(ray):
    @rayr.remote(num_returns=2)
    def pair(x):
        return x, x + 1

    a, b = pair.remote(1)
    assert rayr.get([a, b]) == [1, 2]
    three = pair.options(num_returns=3)
    assert len(three.remote(1)) == 3  # a new handle with its own options...
    assert len(pair.remote(1)) == 2  # ...and the original keeps its own


def test_num_returns_mismatch_is_an_error(ray):
    @rayr.remote(num_returns=3)
    def two():
        return 1, 2

    refs = two.remote()
    with pytest.raises(RayTaskError, match="num_returns=3"):
        rayr.get(refs[0])


def test_num_returns_zero_returns_none(ray):
    @rayr.remote(num_returns=0)
    def nothing():
        return 1

    assert nothing.remote() is None


def test_closures_and_lambdas_travel_by_value(ray):
    offset = 100
    fn = rayr.remote(lambda x: x + offset)
    assert rayr.get(fn.remote(1)) == 101


def test_unknown_option_lists_valid_ones(ray):
    with pytest.raises(ValueError, match="num_cpus"):
        square.options(num_cpu=1)
    with pytest.raises(ValueError, match="'bogus'"):
        rayr.remote(bogus=1)(lambda: None)


def test_bad_option_values(ray):
    with pytest.raises(ValueError, match="num_cpus"):
        square.options(num_cpus=-1)
    with pytest.raises(ValueError, match="max_retries"):
        square.options(max_retries=-2)
    with pytest.raises(ValueError, match="num_cpus"):
        square.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match="scheduling_strategy"):
        square.options(scheduling_strategy="NOWHERE")
    with pytest.raises(ValueError, match="retry_exceptions"):
        square.options(retry_exceptions=["ValueError"])


def test_unpicklable_argument_names_it(ray):
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 1 \(lock\)"):
        add.remote(1, lock)
    with pytest.raises(TypeError, match="keyword argument 'c'"):
        add.remote(1, c=lock)
    assert rayr.get(add.remote(1, 1)) == 2  # nothing was lost


def test_exception_is_both_ray_task_error_and_original(ray):
    class MyError(ValueError):
        pass

    @rayr.remote
    def fail():
        raise MyError("boom")

    with pytest.raises(MyError) as info:
        rayr.get(fail.remote())
    err = info.value
    assert isinstance(err, RayTaskError)
    assert isinstance(err, ValueError)
    assert "boom" in str(err) and "Traceback" in str(err) and "fail" in str(err)


def test_unpicklable_exception_still_reported(ray):
    @rayr.remote
    def fail():
        import threading

        err = RuntimeError("cannot pickle me")
        err.lock = threading.Lock()
        raise err

    with pytest.raises(RayTaskError, match="cannot pickle me"):
        rayr.get(fail.remote())


def test_failed_dependency_propagates(ray):
    @rayr.remote
    def fail():
        raise KeyError("first")

    with pytest.raises(KeyError, match="first"):
        rayr.get(square.remote(fail.remote()))


def test_worker_crash_retried_then_worker_crashed_error(ray, tmp_path):
    marker = tmp_path / "attempts"

    @rayr.remote(max_retries=2)
    def crash_until_third(path):
        with open(path, "a") as f:
            f.write("x")
        with open(path) as f:
            attempts = len(f.read())
        if attempts < 3:
            os._exit(1)
        return "survived"

    assert rayr.get(crash_until_third.remote(str(marker)), timeout=60) == "survived"
    assert marker.read_text() == "xxx"

    @rayr.remote(max_retries=1)
    def always_crash():
        os._exit(1)

    with pytest.raises(WorkerCrashedError, match="always_crash"):
        rayr.get(always_crash.remote(), timeout=60)
    # the pool recovered: more work still runs
    assert rayr.get(square.remote(3), timeout=60) == 9


def test_retry_exceptions(ray, tmp_path):
    marker = tmp_path / "n"

    @rayr.remote(max_retries=3, retry_exceptions=[OSError])
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        with open(path) as f:
            attempts = len(f.read())
        if attempts < 3:
            raise OSError("transient")
        return "ok"

    assert rayr.get(flaky.remote(str(marker))) == "ok"
    assert marker.read_text() == "xxx"

    @rayr.remote(max_retries=3, retry_exceptions=[OSError])
    def wrong_kind():
        raise ValueError("not retried")

    with pytest.raises(ValueError):
        rayr.get(wrong_kind.remote())

    marker2 = tmp_path / "m"

    @rayr.remote(max_retries=2, retry_exceptions=True)
    def always(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError):
        rayr.get(always.remote(str(marker2)))
    assert marker2.read_text() == "xxx"  # first try + 2 retries


def test_application_errors_not_retried_by_default(ray, tmp_path):
    marker = tmp_path / "n"

    @rayr.remote
    def once(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("no retry")

    with pytest.raises(RuntimeError):
        rayr.get(once.remote(str(marker)))
    assert marker.read_text() == "x"


def test_resource_requests_gate_concurrency(ray):
    @rayr.remote(num_cpus=2)
    def span():
        start = time.time()
        time.sleep(0.3)
        return start, time.time()

    spans = sorted(rayr.get([span.remote() for _ in range(3)]))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.02, f"two 2-CPU tasks overlapped on a 2-CPU node: {spans}"


def test_one_cpu_tasks_run_in_parallel(ray):
    @rayr.remote
    def span():
        start = time.time()
        time.sleep(0.4)
        return start, time.time()

    rayr.get([span.remote() for _ in range(2)])  # warm both workers
    (s1, e1), (s2, e2) = rayr.get([span.remote() for _ in range(2)])
    assert s2 < e1 and s1 < e2, "two 1-CPU tasks on a 2-CPU node should overlap"


def test_custom_resources_gate_concurrency(ray):
    @rayr.remote(num_cpus=0, resources={"custom": 2})
    def hog():
        start = time.time()
        time.sleep(0.2)
        return start, time.time()

    spans = sorted(rayr.get([hog.remote() for _ in range(2)]))
    assert spans[1][0] >= spans[0][1] - 0.02


def test_infeasible_task_warns(ray):
    with pytest.warns(RuntimeWarning, match="no node in the cluster has that much"):
        ref = square.options(num_cpus=64).remote(2)
    ready, _ = rayr.wait([ref], timeout=0.2)
    assert ready == []


def test_nested_tasks_do_not_deadlock(ray):
    @rayr.remote
    def leaf(x):
        return x + 1

    @rayr.remote
    def parent(x):
        return rayr.get(leaf.remote(x)) * 10

    # more blocked parents than CPUs: they must release their CPU while waiting
    assert rayr.get([parent.remote(i) for i in range(6)], timeout=60) == [
        (i + 1) * 10 for i in range(6)
    ]


def test_deep_nesting(ray):
    @rayr.remote
    def depth(n):
        if n == 0:
            return 0
        return rayr.get(depth.remote(n - 1)) + 1

    assert rayr.get(depth.remote(5), timeout=60) == 5


def test_a_sync_loop_keeps_to_one_worker(ray):
    """Back-to-back calls go to the worker leased for the last one, which waits for them on
    the stream, not to another idle worker: a large argument is mapped by one process."""

    @rayr.remote
    def pid_of(blob):
        return os.getpid(), len(blob)

    ref = rayr.put(b"x" * (8 << 20))
    calls = [rayr.get(pid_of.remote(ref), timeout=60) for _ in range(20)]
    assert {size for _, size in calls} == {8 << 20}
    # a worker that became idle just then (one finishing its start, say) may take over the
    # loop now and then; two idle workers taking turns, as before, switched every call or two
    pids = [pid for pid, _ in calls[2:]]
    switches = sum(a != b for a, b in itertools.pairwise(pids))
    assert switches <= 3, calls


def test_a_fan_out_runs_children_before_the_next_parents(ray):
    """Children of running tasks are read before queued top-level tasks: a parent blocked in
    get() lends its CPU to its children, not to the next parent, which would need one more
    worker process (one per parent, before)."""

    @rayr.remote
    def child():
        return os.getpid()

    @rayr.remote
    def parent(k):
        return os.getpid(), rayr.get([child.remote() for _ in range(k)])

    parents = 12
    out = rayr.get([parent.remote(10) for _ in range(parents)], timeout=120)
    assert [len(pids) for _, pids in out] == [10] * parents
    processes = {pid for pid, _ in out} | {pid for _, pids in out for pid in pids}
    assert len(processes) < parents, processes


def test_top_level_refs_resolved_nested_refs_kept(ray):
    @rayr.remote
    def inspect(value, holder):
        return type(value).__name__, type(holder[0]).__name__, rayr.get(holder[0])

    ref = rayr.put(41)
    assert rayr.get(inspect.remote(ref, [ref])) == ("int", "ObjectRef", 41)


def test_task_results_as_arguments_chain(ray):
    ref = square.remote(2)
    for _ in range(3):
        ref = square.remote(ref)
    assert rayr.get(ref) == 2 ** 16


def test_dependency_on_slow_task(ray):
    @rayr.remote
    def slow():
        time.sleep(0.3)
        return 5

    assert rayr.get(add.remote(slow.remote(), slow.remote())) == 10


def test_runtime_context_inside_task(ray):
    @rayr.remote
    def ids():
        ctx = rayr.get_runtime_context()
        return ctx.get_node_id(), ctx.get_job_id(), ctx.get_task_id(), os.getpid()

    node, job, task, pid = rayr.get(ids.remote())
    ctx = rayr.get_runtime_context()
    assert node == ctx.get_node_id()
    assert job == ctx.get_job_id()
    assert task is not None and len(task) == 32
    assert ctx.get_task_id() is None
    assert pid != os.getpid()


@rayr.remote
def job_of_child() -> str:
    return rayr.get_runtime_context().get_job_id()


@rayr.remote
def parent_in_a_job() -> tuple[str, str, str]:
    child = job_of_child.remote()
    put = rayr.put("made in a task")
    return child.task_id().hex()[:8], put.hex()[:8], rayr.get(child)


def test_what_a_task_submits_and_puts_belongs_to_its_job(ray):
    # a worker runs tasks of several jobs: its children and objects take the running task's
    job = rayr.get_runtime_context().get_job_id()
    assert rayr.get(parent_in_a_job.remote()) == (job, job, job)


@rayr.remote(num_cpus=0, resources={"nowhere": 1})  # no node has it: queued, never read
def never_runs(i):
    return i


def _queued_in_order(core):
    """The argument of each never_runs task on its stream, in stream order."""
    from rayr import serialization
    from rayr.task_spec import SPEC_FIELD, TaskSpec

    out = []
    for stream in core.gcs.task_streams():
        if "nowhere" in stream:
            for _, fields in core.gcs.stream_client(stream).xrange(stream):
                out.append(serialization.deserialize(TaskSpec.decode(fields[SPEC_FIELD]).args)[0][0])
    return out


def test_a_burst_of_tasks_goes_out_in_order_without_a_get(ray):
    """Tasks submitted in a burst are held back and sent together: with no get or wait to
    push them, the flusher sends them; one sent at once after a pause goes after them."""
    from rayr.context import require_core

    core = require_core()
    with pytest.warns(RuntimeWarning, match="no node in the cluster has that much"):
        refs = [never_runs.remote(i) for i in range(300)]
    try:
        deadline = time.monotonic() + 60
        while len(_queued_in_order(core)) < 300:
            assert time.monotonic() < deadline, "the held-back tasks were never sent"
            time.sleep(0.05)
        assert _queued_in_order(core) == list(range(300))
        refs += [never_runs.remote(i) for i in range(300, 400)]
        time.sleep(0.01)  # past the burst: the next is sent at once, behind the held ones
        refs.append(never_runs.remote(400))
        rayr.wait(refs, timeout=0.5)  # pushes what is still held
        assert _queued_in_order(core) == list(range(401))
    finally:
        for ref in refs:
            rayr.cancel(ref)
