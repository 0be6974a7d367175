"""Remote functions, refs, get/put/wait: what a type checker infers, with or without the plugin.

Checked by mypy in tests/unit/test_typing.py, never run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, assert_type

import rayr
from rayr import ObjectRef, ObjectRefGenerator
from rayr.remote_function import RemoteFunction


@rayr.remote
def square(x: int) -> int:
    return x * x


@rayr.remote(num_cpus=2, max_retries=0, scheduling_strategy="SPREAD")
def describe(x: int, unit: str = "m") -> str:
    return f"{x} {unit}"


@rayr.remote
def count(n: int) -> Iterator[int]:
    yield from range(n)


@rayr.remote
async def tick(n: int) -> AsyncIterator[float]:
    for i in range(n):
        yield float(i)


@rayr.remote(num_returns=2)
def pair() -> tuple[int, int]:
    return 1, 2


def tasks() -> None:
    fn: RemoteFunction[[int], ObjectRef[int]] = square
    del fn
    ref = square.remote(3)
    assert_type(ref, ObjectRef[int])
    assert_type(rayr.get(ref), int)
    assert_type(rayr.get([square.remote(1), square.remote(2)]), list[int])
    assert_type(rayr.get(ref, timeout=1.5), int)
    # a ref where the task expects its value, keyword arguments, defaults
    assert_type(describe.remote(ref), ObjectRef[str])
    assert_type(describe.remote(x=1, unit="km"), ObjectRef[str])
    assert_type(describe.options(name="d", num_gpus=0).remote(1), ObjectRef[str])
    # num_returns other than 1: a list (or None), which the types leave open
    assert_type(pair.remote(), Any)
    assert_type(describe.options(num_returns=2).remote(1), Any)


def objects() -> None:
    assert_type(rayr.put([1, 2]), ObjectRef[list[int]])
    refs = [square.remote(i) for i in range(4)]
    ready, pending = rayr.wait(refs, num_returns=2, timeout=0.5)
    assert_type(ready, list[ObjectRef[int]])
    assert_type(pending, list[ObjectRef[int]])
    value: int = rayr.get(ready[0])
    del value


def generators() -> None:
    gen = count.remote(3)
    assert_type(gen, ObjectRefGenerator[int])
    for item in gen:
        assert_type(item, ObjectRef[int])
    assert_type(next(gen), ObjectRef[int])
    assert_type(tick.remote(2), ObjectRefGenerator[float])
    ready, _ = rayr.wait([gen], timeout=0)
    assert_type(ready, list[ObjectRefGenerator[int]])


async def awaiting() -> None:
    assert_type(await square.remote(2), int)
    async for item in tick.remote(3):
        assert_type(item, ObjectRef[float])
