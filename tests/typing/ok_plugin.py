"""What rayr's mypy plugin adds: ``@rayr.remote`` classes, typed actor method calls, generic
and unannotated functions.

Checked by mypy (with ``plugins = ["rayr.mypy_plugin"]``, as in pyproject.toml) in
tests/unit/test_typing.py, never run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar, assert_type

import rayr
from rayr import ActorClass, ActorHandle, ObjectRef, ObjectRefGenerator

T = TypeVar("T")


@rayr.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def incr(self, by: int = 1) -> int:
        self.value += by
        return self.value

    async def read(self) -> str:
        return str(self.value)

    def upto(self, n: int) -> Iterator[int]:
        yield from range(self.value, n)

    @rayr.method(num_returns=2)
    def both(self) -> tuple[int, int]:
        return self.value, -self.value

    @rayr.method(concurrency_group="io")
    def label(self, prefix: str) -> str:
        return prefix + str(self.value)


@rayr.remote(num_cpus=1, max_restarts=1, concurrency_groups={"io": 2})
class Store:
    def __init__(self, name: str, counter: ActorHandle[Counter]) -> None:
        self.name = name
        self.counter = counter

    def bump(self) -> ObjectRef[int]:
        return self.counter.incr.remote()


def counters() -> None:
    counter = Counter.remote(5)
    assert_type(counter, ActorHandle[Counter])
    assert_type(Counter.remote(), ActorHandle[Counter])
    assert_type(counter.incr.remote(), ObjectRef[int])
    assert_type(counter.incr.remote(by=rayr.put(2)), ObjectRef[int])
    assert_type(rayr.get(counter.incr.remote(2)), int)
    assert_type(counter.read.remote(), ObjectRef[str])  # async def: the awaited value
    assert_type(counter.upto.remote(9), ObjectRefGenerator[int])
    assert_type(counter.both.remote(), Any)  # num_returns=2
    assert_type(counter.label.options(name="l").remote("n="), ObjectRef[str])
    assert_type(counter.__ray_ready__.remote(), Any)
    named = Counter.options(name="c", lifetime="detached").remote(start=1)
    assert_type(named, ActorHandle[Counter])


def stores(counter: ActorHandle[Counter]) -> None:
    store = Store.remote("s", counter)
    assert_type(store.bump.remote(), ObjectRef[ObjectRef[int]])
    rayr.kill(store)


def undecorated() -> None:
    class Plain:
        def get(self) -> bytes:
            return b""

    cls = rayr.remote(Plain)
    assert_type(cls, ActorClass[Plain])
    assert_type(cls.remote().get.remote(), ObjectRef[bytes])
    found = rayr.get_actor("c")
    assert_type(found, ActorHandle[Any])
    assert_type(found.anything.remote(1), Any)


@rayr.remote(max_retries=1)
def first(items: list[T]) -> T:
    return items[0]


@rayr.remote
def unannotated(n, step=1):
    yield from range(0, n, step)


def functions() -> None:
    # a generic function stays generic (the overloads alone would read it as a generator)
    assert_type(first.remote(["a"]), ObjectRef[str])
    assert_type(rayr.get(first.remote([1.5])), float)
    # a generator function streams, annotated or not
    assert_type(unannotated.remote(3, step=2), ObjectRefGenerator[Any])
