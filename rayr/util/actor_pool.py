"""``ActorPool``: spread work over a fixed set of actors, as ``ray.util.ActorPool`` does."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import rayr
from rayr.actor import ActorHandle
from rayr.object_ref import ObjectRef

TIMEOUT_MESSAGE = "Timed out waiting for result"


class ActorPool:
    """Runs ``fn(actor, value)`` calls on a pool of actors, at most one call per actor at a time.

    A value submitted while every actor is busy waits in the pool and is dispatched as soon as
    an actor is returned to it, which happens when that actor's result is taken with
    :meth:`get_next` or :meth:`get_next_unordered`.

    Args:
        actors: the actor handles to use; more can be added later with :meth:`push`.

    Example:
        >>> pool = ActorPool([Worker.remote(), Worker.remote()])
        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))
        [2, 4, 6]
    """

    def __init__(self, actors: list[ActorHandle]) -> None:
        self._idle: list[ActorHandle] = list(actors)
        # submission index -> (result ref, actor running it), in submission order
        self._in_flight: dict[int, tuple[ObjectRef, ActorHandle]] = {}
        self._index_of: dict[ObjectRef, int] = {}
        self._pending: deque[tuple[Callable[[Any, Any], ObjectRef], Any]] = deque()
        self._next_task_index = 0

    # ------------------------------------------------------------------ bulk
    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every value; yields the results in the order of ``values``.

        Results of earlier submissions that were not collected yet are discarded first.

        Args:
            fn: called as ``fn(actor, value)``; must return an ObjectRef.
            values: the inputs, all submitted before the first result is yielded.
        """
        self._discard_outstanding()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Like :meth:`map`, but yields each result as soon as it is ready."""
        self._discard_outstanding()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _discard_outstanding(self) -> None:
        # as in Ray: a new map starts from a clean pool, so results nobody collected are dropped
        while self.has_next():
            try:
                self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # ----------------------------------------------------------- one by one
    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one is free.

        Args:
            fn: called as ``fn(actor, value)``; must return an ObjectRef.
            value: the input.
        """
        if not self._idle:
            self._pending.append((fn, value))
            return
        actor = self._idle.pop()
        try:
            ref = fn(actor, value)
            if not isinstance(ref, ObjectRef):
                raise TypeError(
                    "ActorPool: fn(actor, value) must return an ObjectRef (e.g. "
                    f"actor.method.remote(value)), got {type(ref).__name__}"
                )
        except BaseException:
            self._idle.append(actor)  # the actor is not running anything for us
            raise
        index = self._next_task_index
        self._next_task_index += 1
        self._in_flight[index] = (ref, actor)
        self._index_of[ref] = index

    def has_next(self) -> bool:
        """Whether any submitted call's result has not been returned yet."""
        return bool(self._in_flight)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting for it as needed.

        "Next" is the oldest submission whose result has not been returned, so results already
        taken by :meth:`get_next_unordered` are skipped.

        Args:
            timeout: seconds to wait; None waits as long as it takes.
            ignore_if_timedout: on a timeout, give up on that result (its actor goes back to the
                pool) so the following call returns the one after it; TimeoutError is raised
                either way.

        Raises:
            StopIteration: nothing is left to return.
            TimeoutError: the result was not ready within ``timeout``.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = next(iter(self._in_flight))  # indices grow, and dicts keep insertion order
        ref = self._in_flight[index][0]
        if timeout is not None:
            ready, _ = rayr.wait([ref], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(TIMEOUT_MESSAGE)
                self._finish(index)
                raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {ref} has been ignored.")
        self._finish(index)
        return rayr.get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever pending result is ready first, waiting for one as needed.

        Args:
            timeout: seconds to wait; None waits as long as it takes.
            ignore_if_timedout: on a timeout, give up on the oldest pending result (its actor goes
                back to the pool); TimeoutError is raised either way.

        Raises:
            StopIteration: nothing is left to return.
            TimeoutError: no result was ready within ``timeout``.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        refs = [ref for ref, _ in self._in_flight.values()]
        ready, _ = rayr.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            if not ignore_if_timedout:
                raise TimeoutError(TIMEOUT_MESSAGE)
            oldest = next(iter(self._in_flight))
            ref = self._in_flight[oldest][0]
            self._finish(oldest)
            raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {ref} has been ignored.")
        ref = ready[0]
        self._finish(self._index_of[ref])
        return rayr.get(ref)

    def _finish(self, index: int) -> None:
        """Forget a submission and give its actor back to the pool."""
        ref, actor = self._in_flight.pop(index)
        del self._index_of[ref]
        self._return_actor(actor)

    def _return_actor(self, actor: ActorHandle) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    # --------------------------------------------------------------- actors
    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._pending

    def pop_idle(self) -> ActorHandle | None:
        """Take an idle actor out of the pool; None if none is free (see :meth:`has_free`)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool; a queued submission, if any, starts on it at once.

        Raises:
            ValueError: the actor is already in this pool.
        """
        busy = [a for _, a in self._in_flight.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


__all__ = ["ActorPool"]
