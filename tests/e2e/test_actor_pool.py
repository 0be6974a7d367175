"""rayr.util.ActorPool end to end: real actors, ordering, queueing, timeouts, pool membership."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import rayr
from rayr.util import ActorPool


@rayr.remote
class Worker:
    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.running = 0
        self.max_running = 0

    def double(self, x: int) -> int:
        return 2 * x

    def nap(self, args: tuple[float, Any]) -> Any:
        delay, value = args
        time.sleep(delay)
        return value

    def tagged(self, x: int) -> tuple[str, int]:
        return self.tag, x

    def fail(self, x: int) -> int:
        raise ValueError(f"bad value {x}")


@pytest.fixture
def workers(ray: Any) -> Iterator[list[Any]]:
    """Two fresh actors, killed after the test so idle actor processes do not pile up."""
    actors = [Worker.remote("a"), Worker.remote("b")]
    rayr.get([a.double.remote(0) for a in actors], timeout=60)  # both constructed
    yield actors
    for actor in actors:
        rayr.kill(actor)


def double(actor: Any, value: int) -> Any:
    return actor.double.remote(value)


def nap(actor: Any, value: tuple[float, Any]) -> Any:
    return actor.nap.remote(value)


def test_exported_from_util(ray: Any) -> None:
    assert rayr.util.ActorPool is ActorPool
    assert "ActorPool" in rayr.util.__all__ and "list_named_actors" in rayr.util.__all__


def test_map_keeps_input_order(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    # early values take longest, so completion order is the reverse of input order
    values = [(0.05 * (5 - i), i) for i in range(6)]
    assert list(pool.map(nap, values)) == list(range(6))
    assert list(pool.map(double, range(10))) == [2 * i for i in range(10)]
    assert not pool.has_next()


def test_map_unordered_yields_fastest_first(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    results = list(pool.map_unordered(nap, [(1.0, "slow"), (0.0, "fast-1"), (0.0, "fast-2")]))
    assert sorted(results) == ["fast-1", "fast-2", "slow"]
    # the slow call holds one actor; both fast ones run on the other and come back first
    assert results[-1] == "slow"
    assert list(pool.map_unordered(double, [])) == []


def test_map_is_lazy_over_results_but_submits_everything(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    calls: list[int] = []

    def fn(actor: Any, value: int) -> Any:
        calls.append(value)
        return actor.double.remote(value)

    gen = pool.map(fn, range(5))
    assert calls == [0, 1], "only as many calls as actors start before results are taken"
    assert next(gen) == 0
    assert calls == [0, 1, 2], "taking a result frees an actor for the next queued value"
    assert list(gen) == [2, 4, 6, 8]
    assert calls == [0, 1, 2, 3, 4]


def test_submit_queues_when_all_actors_are_busy(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    started: list[str] = []

    def fn(actor: Any, value: str) -> Any:
        started.append(value)
        return actor.tagged.remote(len(started))

    assert pool.has_free() and not pool.has_next()
    for v in "abcde":
        pool.submit(fn, v)
    assert started == ["a", "b"], "values beyond the number of actors must wait in the pool"
    assert not pool.has_free() and pool.pop_idle() is None
    results = [pool.get_next(timeout=30) for _ in range(5)]
    assert started == list("abcde")
    assert [x for _, x in results] == [1, 2, 3, 4, 5]  # submission order
    assert {tag for tag, _ in results} == {"a", "b"}
    assert not pool.has_next() and pool.has_free()


def test_get_next_in_order_and_stop_iteration(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()
    pool.submit(nap, (0.5, "first"))
    pool.submit(nap, (0.0, "second"))
    assert pool.has_next()
    assert pool.get_next() == "first"
    assert pool.get_next() == "second"
    assert not pool.has_next()


def test_get_next_timeout_keeps_or_ignores_the_result(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    pool.submit(nap, (1.0, "late"))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="Timed out"):
        pool.get_next(timeout=0.2)
    assert time.monotonic() - start > 0.15
    assert pool.has_next(), "without ignore_if_timedout the result stays pending"
    assert pool.get_next(timeout=10) == "late"

    pool.submit(nap, (1.0, "dropped"))
    pool.submit(double, 21)
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert pool.get_next(timeout=10) == 42, "the ignored result is skipped"
    assert not pool.has_next() and pool.has_free()


def test_get_next_unordered_timeout(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    pool.submit(nap, (1.0, "a"))
    pool.submit(nap, (1.0, "b"))
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)
    assert pool.has_next() and not pool.has_free()
    assert sorted([pool.get_next_unordered(timeout=10), pool.get_next_unordered(timeout=10)]) == ["a", "b"]

    pool.submit(nap, (0.6, "oldest"))
    pool.submit(nap, (0.9, "newer"))
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    assert pool.has_free(), "the ignored call's actor is back in the pool"
    assert pool.get_next_unordered(timeout=10) == "newer"
    assert not pool.has_next()


def test_unordered_then_ordered_skips_taken_results(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    pool.submit(nap, (0.8, "slow"))
    pool.submit(nap, (0.0, "fast"))
    assert pool.get_next_unordered(timeout=10) == "fast"
    assert pool.get_next(timeout=10) == "slow"
    assert not pool.has_next()


def test_errors_surface_and_free_the_actor(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    pool.submit(double, 4)
    with pytest.raises(ValueError, match="bad value 7"):
        pool.get_next(timeout=10)
    assert pool.get_next(timeout=10) == 8
    assert sorted(pool.map(double, [1, 2, 3])) == [2, 4, 6]

    with pytest.raises(TypeError, match="ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free() and not pool.has_next(), "a failed submit must not lose the actor"
    assert list(pool.map(double, [5, 6])) == [10, 12]


def test_new_map_discards_uncollected_results(workers: list[Any]) -> None:
    pool = ActorPool(workers)
    pool.submit(double, 100)
    pool.submit(double, 200)
    pool.submit(double, 300)  # queued
    assert list(pool.map(double, [1, 2, 3])) == [2, 4, 6]
    assert not pool.has_next()


def test_pop_idle_and_push(workers: list[Any], ray: Any) -> None:
    a, b = workers
    pool = ActorPool([a])
    assert pool.has_free()
    popped = pool.pop_idle()
    assert popped == a
    assert not pool.has_free() and pool.pop_idle() is None

    calls: list[int] = []

    def fn(actor: Any, value: int) -> Any:
        calls.append(value)
        return actor.tagged.remote(value)

    pool.submit(fn, 1)
    assert calls == [] and not pool.has_next(), "no actor: the value waits"
    pool.push(b)
    assert calls == [1], "a pushed actor picks up the queued value at once"
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)  # busy member
    assert pool.get_next(timeout=10) == ("b", 1)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)  # idle member
    pool.push(a)
    results = list(pool.map(fn, [10, 11, 12, 13]))
    assert [x for _, x in results] == [10, 11, 12, 13]
    assert {tag for tag, _ in results} == {"a", "b"}, "both members take work"
    assert {pool.pop_idle(), pool.pop_idle()} == {a, b}
    assert pool.pop_idle() is None
