"""Generator tasks and actor methods stream their items to the caller."""

from __future__ import annotations

import asyncio
import time

import pytest

import rayr
from rayr.exceptions import RayTaskError


@rayr.remote
def count(n, delay=0.0):
    for i in range(n):
        time.sleep(delay)
        yield i


def test_generator_returns_object_ref_generator(ray):
    gen = count.remote(5)
    assert isinstance(gen, rayr.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, rayr.ObjectRef) for r in refs)
    assert rayr.get(refs) == [0, 1, 2, 3, 4]


def test_first_item_arrives_before_the_task_finishes(ray):
    @rayr.remote
    def slow_tail():
        yield "first"
        time.sleep(1.5)
        yield "second"

    gen = slow_tail.remote()
    start = time.monotonic()
    first = next(gen)
    arrived = time.monotonic() - start
    assert rayr.get(first) == "first"
    ready, _ = rayr.wait([gen.completed()], timeout=0)
    assert ready == [], "the task should still be running"
    assert arrived < 1.2
    assert rayr.get(next(gen)) == "second"
    with pytest.raises(StopIteration):
        next(gen)


def test_exception_mid_stream_surfaces_at_that_point(ray):
    @rayr.remote
    def breaks():
        yield 1
        yield 2
        raise KeyError("stream broke")

    values = []
    with pytest.raises(KeyError, match="stream broke") as info:
        for ref in breaks.remote():
            values.append(rayr.get(ref))
    assert values == [1, 2]
    assert isinstance(info.value, RayTaskError)


def test_empty_generator(ray):
    assert list(count.remote(0)) == []


def test_explicit_num_returns_on_generator(ray):
    a, b = count.options(num_returns=2).remote(2)
    assert rayr.get([a, b]) == [0, 1]


def test_async_iteration(ray):
    async def consume():
        return [await ref async for ref in count.remote(4)]

    assert asyncio.run(consume()) == [0, 1, 2, 3]


def test_large_items_go_through_the_store(ray):
    import numpy as np

    @rayr.remote
    def arrays():
        for i in range(3):
            yield np.full(200_000, i)

    assert [int(rayr.get(r)[0]) for r in arrays.remote()] == [0, 1, 2]


def test_actor_generator_methods(ray):
    @rayr.remote
    class Source:
        def items(self, n):
            yield from range(n)

    @rayr.remote
    class AsyncSource:
        async def items(self, n):
            for i in range(n):
                await asyncio.sleep(0.01)
                yield i * 2

    assert rayr.get(list(Source.remote().items.remote(3))) == [0, 1, 2]
    assert rayr.get(list(AsyncSource.remote().items.remote(3))) == [0, 2, 4]


def test_next_ready_timeout(ray):
    gen = count.remote(2, 1.0)
    with pytest.raises(TimeoutError):
        gen.next_ready(timeout=0.1)
    assert rayr.get(gen.next_ready(timeout=10)) == 0


def test_cancel_a_generator(ray):
    gen = count.remote(1000, 0.05)
    assert rayr.get(next(gen)) == 0
    rayr.cancel(gen)
    with pytest.raises(rayr.exceptions.TaskCancelledError):
        for ref in gen:
            rayr.get(ref)


def test_wait_takes_generators_ready_when_next_would_not_block(ray):
    @rayr.remote
    def gated(delay):
        time.sleep(delay)
        yield "a"
        time.sleep(delay)

    gen = gated.remote(1.0)
    other = rayr.put(1)
    ready, not_ready = rayr.wait([gen], timeout=0.1)
    assert ready == [] and not_ready == [gen]  # its first item is a second away
    ready, not_ready = rayr.wait([gen, other], num_returns=2, timeout=30)
    assert ready == [gen, other] and not_ready == []
    assert rayr.get(next(gen)) == "a"
    ready, _ = rayr.wait([gen], timeout=30)  # ready again once it has ended
    assert ready == [gen]
    with pytest.raises(StopIteration):
        next(gen)
    ready, _ = rayr.wait([gen], timeout=0)  # an exhausted generator stays ready
    assert ready == [gen]


@rayr.remote(num_returns="dynamic")
def dynamic_squares(n):
    for i in range(n):
        yield i * i


@rayr.remote(num_returns="dynamic")
def dynamic_fails(n):
    yield from range(n)
    raise ValueError("the generator broke")


@rayr.remote
def total(generator):
    return sum(rayr.get(list(generator)))


def test_dynamic_num_returns_gives_a_ref_to_a_generator_of_refs(ray):
    from rayr import DynamicObjectRefGenerator
    from rayr._raylet import DynamicObjectRefGenerator as FromRaylet

    ref = dynamic_squares.remote(5)
    assert isinstance(ref, rayr.ObjectRef)
    generator = rayr.get(ref)
    assert isinstance(generator, DynamicObjectRefGenerator) and FromRaylet is DynamicObjectRefGenerator
    assert len(generator) == 5 and rayr.get(list(generator)) == [0, 1, 4, 9, 16]
    assert rayr.get(total.remote(ref)) == 30  # passed on: the task gets the generator of refs
    del generator
    first = next(iter(rayr.get(ref)))
    assert rayr.get(first) == 0  # the items live as long as the generator's object does
    first_hex = first.hex()
    del first, ref
    gcs = rayr.context.state.core.gcs
    deadline = time.monotonic() + 60
    while gcs.get_objects([first_hex]) != [None]:  # and are freed with it
        assert time.monotonic() < deadline, "a dynamic generator's item outlived every ref"
        rayr.get(rayr.put(0))  # let the driver send its frees
        time.sleep(0.05)
    with pytest.raises(ValueError, match="the generator broke"):
        rayr.get(dynamic_fails.remote(2))
    with pytest.raises(ValueError, match="'dynamic'"):
        dynamic_squares.options(num_returns="dynamc")
