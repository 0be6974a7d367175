"""``Queue``: a FIFO queue shared by the driver, tasks and actors, as ``ray.util.queue.Queue``.

The items live in an async actor; a :class:`Queue` object only holds that actor's handle, so it
can be passed to tasks and actors and every copy works on the same queue. Callers blocked in
``put``/``get`` wait as coroutines on the actor's event loop, not as threads.
"""

from __future__ import annotations

import asyncio
import queue as std_queue
from collections.abc import Iterable
from typing import Any

import rayr
from rayr.actor import ActorClass, ActorHandle


class Empty(std_queue.Empty):
    """Raised by a non-blocking or timed ``get`` when there is nothing to take."""


class Full(std_queue.Full):
    """Raised by a non-blocking or timed ``put`` when the queue has no room."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise TypeError(f"'timeout' must be None or a number of seconds, got {timeout!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in first-out queue backed by an actor, usable from any process of the cluster.

    Args:
        maxsize: the most items it holds; 0 or less means no limit.
        actor_options: options for the actor holding the items, as for ``Cls.options(...)``
            (e.g. ``{"num_cpus": 0, "name": "jobs"}``).

    Example:
        >>> q = Queue(maxsize=10)
        >>> q.put(1)
        >>> q.get(timeout=5)
        1
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"'maxsize' must be an int, got {maxsize!r}")
        self.maxsize = maxsize
        self.actor: ActorHandle | None = _queue_actor_class().options(**(actor_options or {})).remote(maxsize)

    def _handle(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("This Queue was shut down; create a new one")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue right now."""
        return int(rayr.get(self._handle().qsize.remote()))

    def qsize(self) -> int:
        """The number of items in the queue right now (same as :meth:`size`)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no items right now."""
        return bool(rayr.get(self._handle().empty.remote()))

    def full(self) -> bool:
        """Whether the queue has no room right now (never true without a ``maxsize``)."""
        return bool(rayr.get(self._handle().full.remote()))

    # ------------------------------------------------------------------- put
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item, waiting for room if the queue is full.

        Args:
            item: the item; an ObjectRef passed here is stored as its value, as in Ray.
            block: wait for room; False fails at once when the queue is full (``timeout`` unused).
            timeout: with ``block``, seconds to wait for room; None waits as long as it takes.

        Raises:
            Full: no room, at once (``block=False``) or within ``timeout``.
            ValueError: a negative ``timeout``.
        """
        if block:
            _check_timeout(timeout)
            error = rayr.get(self._handle().put.remote(item, timeout))
        else:
            error = rayr.get(self._handle().put_nowait.remote(item))
        if error is not None:
            raise Full(error)

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """:meth:`put` for asyncio code: awaits instead of blocking the calling thread."""
        if block:
            _check_timeout(timeout)
            error = await self._handle().put.remote(item, timeout)
        else:
            error = await self._handle().put_nowait.remote(item)
        if error is not None:
            raise Full(error)

    def put_nowait(self, item: Any) -> None:
        """Add an item if there is room, else raise :class:`Full`; same as ``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` in order, or none of them if they do not all fit.

        Raises:
            Full: the queue has no room for every item; it is left unchanged.
            TypeError: ``items`` is not iterable.
        """
        if not isinstance(items, Iterable):
            raise TypeError(f"Argument 'items' must be an Iterable, got {type(items).__name__}")
        error = rayr.get(self._handle().put_nowait_batch.remote(list(items)))
        if error is not None:
            raise Full(error)

    # ------------------------------------------------------------------- get
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, waiting for one if the queue is empty.

        Args:
            block: wait for an item; False fails at once when the queue is empty (``timeout``
                unused).
            timeout: with ``block``, seconds to wait for an item; None waits as long as it takes.

        Raises:
            Empty: no item, at once (``block=False``) or within ``timeout``.
            ValueError: a negative ``timeout``.
        """
        if block:
            _check_timeout(timeout)
            ok, value = rayr.get(self._handle().get.remote(timeout))
        else:
            ok, value = rayr.get(self._handle().get_nowait.remote())
        if not ok:
            raise Empty(value)
        return value

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """:meth:`get` for asyncio code: awaits instead of blocking the calling thread."""
        if block:
            _check_timeout(timeout)
            ok, value = await self._handle().get.remote(timeout)
        else:
            ok, value = await self._handle().get_nowait.remote()
        if not ok:
            raise Empty(value)
        return value

    def get_nowait(self) -> Any:
        """Remove and return the oldest item, or raise :class:`Empty`; same as ``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, or none if there are fewer.

        Raises:
            Empty: fewer than ``num_items`` items are queued; the queue is left unchanged.
            TypeError: ``num_items`` is not an int.
            ValueError: ``num_items`` is negative.
        """
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"Argument 'num_items' must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        ok, value = rayr.get(self._handle().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(value)
        return list(value)

    # -------------------------------------------------------------- shutdown
    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Terminate the queue's actor; its items are lost and blocked callers fail.

        Other copies of this Queue (passed to tasks or actors) stop working too: their calls raise
        ``ActorDiedError``. Calling it again does nothing.

        Args:
            force: kill the actor at once, without waiting for calls already sent to it.
            grace_period_s: without ``force``, how long to let the actor exit on its own before
                killing it.
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if not force:
            done = actor.terminate.remote()
            ready, _ = rayr.wait([done], timeout=grace_period_s)
            if ready:
                return
        rayr.kill(actor, no_restart=True)


class _QueueActor:
    """Holds the items. Methods report Full/Empty as values so callers raise clean exceptions."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> str | None:
        # Try without waiting first: wait_for(timeout=0) cancels even a put that could succeed.
        if not self.queue.full():
            self.queue.put_nowait(item)
            return None
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            return f"the queue stayed full (maxsize {self.maxsize}) for {timeout} s"
        return None

    async def get(self, timeout: float | None = None) -> tuple[bool, Any]:
        if not self.queue.empty():
            return True, self.queue.get_nowait()
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return False, f"the queue stayed empty for {timeout} s"

    def put_nowait(self, item: Any) -> str | None:
        if self.queue.full():
            return f"the queue is full (maxsize {self.maxsize})"
        self.queue.put_nowait(item)
        return None

    def put_nowait_batch(self, items: list[Any]) -> str | None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (
                f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                f"and maxsize {self.maxsize}."
            )
        for item in items:
            self.queue.put_nowait(item)
        return None

    def get_nowait(self) -> tuple[bool, Any]:
        if self.queue.empty():
            return False, "the queue is empty"
        return True, self.queue.get_nowait()

    def get_nowait_batch(self, num_items: int) -> tuple[bool, Any]:
        if num_items > self.queue.qsize():
            return False, f"Cannot get {num_items} items from queue of size {self.queue.qsize()}."
        return True, [self.queue.get_nowait() for _ in range(num_items)]

    def terminate(self) -> None:
        rayr.actor.exit_actor()


_actor_class: ActorClass | None = None


def _queue_actor_class() -> ActorClass:
    # made remote on first use, not at import: the module attribute must stay the plain class so
    # cloudpickle ships it by reference to workers (which import this module) instead of by value
    global _actor_class
    if _actor_class is None:
        _actor_class = rayr.remote(_QueueActor)
    return _actor_class


__all__ = ["Empty", "Full", "Queue"]
