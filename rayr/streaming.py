"""Streaming generators: iterate a generator task's items while the task still runs.

The executor stores item ``i`` under return index ``STREAM_FIRST_ITEM + i`` as soon as it
is yielded, and when the generator ends stores the item count under index 1. An exception
raised by the generator becomes one last item whose ``get`` raises it, as in Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from rayr import context
from rayr.gcs import records as rec
from rayr.object_ref import ObjectRef
from rayr.task_spec import DYNAMIC, STREAM_FIRST_ITEM, STREAMING

T_co = TypeVar("T_co", covariant=True)


def remote_result(refs: list[ObjectRef[Any]], num_returns: int) -> Any:
    """What ``.remote()`` returns for a task or actor call with ``num_returns``: its one ref (1,
    or "dynamic"), None (0), a generator of its items (streaming) or the list of refs."""
    if num_returns in (1, DYNAMIC):
        return refs[0]
    if num_returns == 0:
        return None
    if num_returns == STREAMING:
        return ObjectRefGenerator(refs[0])
    return refs


class DynamicObjectRefGenerator(Generic[T_co]):
    """What ``get`` returns for a ``num_returns="dynamic"`` task: the refs of the items its
    generator yielded, in order (Ray's older form of generator tasks; it keeps them alive)."""

    def __init__(self, refs: list[ObjectRef[T_co]]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef[T_co]]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_dynamic, (self._refs,))


def _rebuild_dynamic(refs: list[ObjectRef[Any]]) -> DynamicObjectRefGenerator[Any]:
    """Unpickle a dynamic generator. Its items are held in Redis by the object that carries
    it (return 1 of the task), so their owner must free them there, not just drop them:
    marked shared, as a ref sent to another process would be."""
    core = context.state.core
    if core is not None and refs:
        for ref in refs:
            core.mark_shared(ref.binary())
        if refs[0].owner_address() == core.worker_hex:
            # every item has its ref now: from here they are ordinary (shared) objects, read
            # from the object table once dropped here, not items still to arrive
            core.forget_stream(refs[0].binary()[:16], STREAM_FIRST_ITEM)
    return DynamicObjectRefGenerator(refs)


class ObjectRefGenerator(Generic[T_co]):
    """What ``f.remote()`` returns for a generator task: yields one ObjectRef per item.

    ``ObjectRefGenerator[T]`` (for type checkers) yields ``ObjectRef[T]``: a function
    annotated ``-> Iterator[T]`` or ``-> Generator[T, ...]`` streams refs of ``T``.
    """

    def __init__(self, end_ref: ObjectRef[Any]) -> None:
        self._end = end_ref
        self._task = end_ref.binary()[:16]
        self._owner = end_ref.owner_address()
        self._next = 0
        self._total: int | None = None

    def __iter__(self) -> ObjectRefGenerator[T_co]:
        return self

    def __next__(self) -> ObjectRef[T_co]:
        ref = self._next_ref(None)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> ObjectRefGenerator[T_co]:
        return self

    async def __anext__(self) -> ObjectRef[T_co]:
        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_ref, None)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def next_ready(self, timeout: float | None) -> ObjectRef[T_co] | None:
        """The next item's ref within ``timeout`` seconds (TimeoutError if none), or None at the end."""
        return self._next_ref(timeout, raise_timeout=True)

    def completed(self) -> ObjectRef[Any]:
        """A ref that resolves (to the item count) when the generator task has finished."""
        return self._end

    def _probe_ids(self) -> list[bytes]:
        """Ids one of which is ready exactly when ``next()`` would not block: the next item's,
        and the end's (the item count, or the task's error)."""
        if self._total is not None and self._next >= self._total:
            return [self._end.binary()]
        return [self._item_id(self._next), self._end.binary()]

    def _item_id(self, index: int) -> bytes:
        return self._task + (STREAM_FIRST_ITEM + index).to_bytes(4, "big")

    def _next_ref(self, timeout: float | None, raise_timeout: bool = False) -> ObjectRef[T_co] | None:
        core = context.require_core()
        end = self._end.binary()
        while True:
            if self._total is not None and self._next >= self._total:
                return None
            item = self._item_id(self._next)
            ready = core.wait_ready([item, end], 1, timeout)
            if item in ready:
                self._next += 1
                return ObjectRef(item, self._owner)
            if end in ready:
                record = core.record_of(end)
                assert record is not None
                if record[0] != rec.VALUE:  # the task died: its error is the last "item"
                    self._total = self._next
                    self._next += 1
                    return self._end
                self._total = int(core.value_of(end, record))
                continue
            if raise_timeout:
                raise TimeoutError(f"no new item within {timeout}s")

    def __del__(self) -> None:
        core = context.state.core
        if core is not None:
            core.forget_stream(self._task, STREAM_FIRST_ITEM + self._next)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._end.hex()})"
