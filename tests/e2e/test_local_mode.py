"""init(local_mode=True): tasks and actors run in the driver process, serially, with the
serialization semantics of a real worker."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import rayr
from rayr.exceptions import ActorDiedError, RayTaskError


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    os.environ["RAYR_TEMP_DIR"] = str(tmp_path_factory.mktemp("local-sessions"))
    rayr.init(local_mode=True, num_cpus=1, include_dashboard=False)
    yield
    rayr.shutdown()
    del os.environ["RAYR_TEMP_DIR"]


MAIN = threading.get_ident()


@rayr.remote
def where(x):
    return x, os.getpid(), threading.get_ident() == MAIN, rayr.get_runtime_context().get_task_id()


@rayr.remote
def mutate(items):
    items.append("changed inside")
    return items


@rayr.remote
def fan_out(n):
    return [value for value, *_ in rayr.get([where.remote(i) for i in range(n)])]


@rayr.remote
def numbers(n):
    yield from range(n)


@rayr.remote(max_retries=0)
def fails():
    raise KeyError("no such key")


@rayr.remote
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, n):
        self.value += n
        return self.value, os.getpid()

    async def later(self):
        await asyncio.sleep(0)
        return self.value


def test_tasks_run_in_the_driver_thread_that_submits_them(local):
    value, pid, same_thread, task_id = rayr.get(where.remote(41))
    assert (value, pid, same_thread) == (41, os.getpid(), True) and task_id
    assert rayr.get(fan_out.remote(4)) == [0, 1, 2, 3]  # nested tasks and get() inside a task


def test_arguments_and_results_are_copies_as_on_a_worker(local):
    items = ["original"]
    assert rayr.get(mutate.remote(items)) == ["original", "changed inside"]
    assert items == ["original"]
    big = list(range(100_000))  # a large argument goes through the object store
    ref = rayr.put(big)
    assert rayr.get(where.remote(ref))[0] == big


def test_errors_generators_and_refs_as_arguments(local):
    with pytest.raises(KeyError) as caught:
        rayr.get(fails.remote())
    assert isinstance(caught.value, RayTaskError)
    assert [rayr.get(r) for r in numbers.remote(3)] == [0, 1, 2]
    assert rayr.get(where.remote(where.remote(5)))[0][0] == 5


def test_actors_live_in_the_driver(local):
    counter = Counter.options(name="local-counter").remote(10)
    assert rayr.get(counter.add.remote(1)) == (11, os.getpid())
    assert rayr.get(rayr.get_actor("local-counter").add.remote(2))[0] == 13
    assert rayr.get(counter.later.remote()) == 13
    assert rayr.get(counter.__ray_ready__.remote()) is True
    rayr.kill(counter)
    with pytest.raises(ActorDiedError):
        rayr.get(counter.add.remote(1))


def test_local_mode_cannot_join_a_cluster():
    with pytest.raises(ValueError, match="local_mode"):
        rayr.init(address="127.0.0.1:1", local_mode=True)
