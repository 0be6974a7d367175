"""A drop-in ``multiprocessing.Pool`` whose processes are rayr actors.

Each pool process is one actor, so an ``initializer`` runs once per process and state it sets
(module globals, open clients) is seen by every later call in that process, as with the
stdlib. Work travels in chunks of ``chunksize`` items per actor call; the function is pickled
once per pool call and cached by digest inside each actor.

A driver-side thread watches the calls in flight: it keeps each actor's load up to date (new
chunks go to the least-loaded actor), runs ``callback``/``error_callback`` as results land,
and retires actors that reached ``maxtasksperchild``. It runs only while work is in flight.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import itertools
import logging
import math
import multiprocessing
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cloudpickle

import rayr
from rayr import context
from rayr.actor import ActorClass, ActorHandle
from rayr.object_ref import ObjectRef

log = logging.getLogger(__name__)

RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

# How long the watcher blocks in one wait(): refs submitted meanwhile are noticed no later.
_WATCH_TICK_S = 0.05
# Larger pickled functions go through the object store once instead of inline in every call.
_INLINE_FUNCTION_LIMIT = 64 * 1024
_FUNCTION_CACHE_SIZE = 64
# imap keeps this many chunks per process in flight: enough to never starve an actor,
# bounded so a huge (or endless) iterable is not read all at once.
_IMAP_CHUNKS_PER_PROCESS = 2


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """A result was not ready in time; caught by ``except multiprocessing.TimeoutError`` too."""


def _name_of(func: Any) -> str:
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{name}" if module else str(name)


def _pickle_function(func: Any, what: str = "function") -> bytes:
    """``func`` pickled by value where needed; TypeError naming it if it cannot travel."""
    if not callable(func):
        raise TypeError(f"The pool's {what} must be callable, got {type(func).__name__}")
    try:
        return bytes(cloudpickle.dumps(func, protocol=5))
    except Exception as err:
        raise TypeError(
            f"Could not serialize the {what} {_name_of(func)!r} to send it to the pool's processes: "
            f"{type(err).__name__}: {err}. It and everything it refers to must be picklable "
            "(cloudpickle); define it at module level or avoid capturing locks, sockets or files."
        ) from err


def _rebind(func: types.FunctionType, globals_: dict[str, Any]) -> types.FunctionType:
    """A copy of ``func`` that reads and writes its globals in ``globals_``."""
    out = types.FunctionType(func.__code__, globals_, func.__name__, func.__defaults__, func.__closure__)
    out.__kwdefaults__ = func.__kwdefaults__
    out.__qualname__ = func.__qualname__
    out.__module__ = func.__module__
    out.__doc__ = func.__doc__
    out.__dict__.update(func.__dict__)
    return out


class _PoolProcess:
    """One pool process (an actor): runs the initializer once, then chunks of work.

    Functions pickled by value (those of ``__main__``) each arrive with a private copy of
    their module's globals, so a global set by the initializer would be invisible to the
    work functions (Ray's pool has this gap). Here the functions of one such module share
    one globals dict per process, as in a real process: a name the process rebound keeps its
    value, any other name takes the driver's value as of the latest call.
    """

    def __init__(self, initializer: bytes | None, initargs: tuple[Any, ...]) -> None:
        self._functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        self._module_globals: dict[str, dict[str, Any]] = {}
        self._shipped: dict[str, dict[str, Any]] = {}  # per module: the values the driver sent
        if initializer is not None:
            self._adopt(cloudpickle.loads(initializer))(*initargs)

    def _adopt(self, func: Any) -> Any:
        if not isinstance(func, types.FunctionType):
            return func
        module = sys.modules.get(func.__module__)
        if module is not None and func.__globals__ is vars(module):
            return func  # pickled by reference: it already uses the real module's globals
        fresh = func.__globals__
        shared = self._module_globals.get(func.__module__)
        if shared is None:
            self._module_globals[func.__module__] = fresh
            self._shipped[func.__module__] = dict(fresh)
            return func
        shipped = self._shipped[func.__module__]
        for name, value in fresh.items():
            if name in shared and not (name in shipped and shared[name] is shipped[name]):
                continue  # the process rebound it (e.g. in the initializer): keep its value
            if isinstance(value, types.FunctionType) and value.__globals__ is fresh:
                value = _rebind(value, shared)
            shared[name] = shipped[name] = value
        return _rebind(func, shared)

    def _function(self, digest: str, payload: bytes) -> Callable[..., Any]:
        func = self._functions.get(digest)
        if func is None:
            func = self._adopt(cloudpickle.loads(payload))
            self._functions[digest] = func
            if len(self._functions) > _FUNCTION_CACHE_SIZE:
                self._functions.popitem(last=False)
        else:
            self._functions.move_to_end(digest)
        return func

    def run_chunk(self, digest: str, payload: bytes, chunk: list[Any], star: bool) -> list[Any]:
        func = self._function(digest, payload)
        if star:
            return [func(*args) for args in chunk]
        return [func(item) for item in chunk]

    def run_call(self, digest: str, payload: bytes, args: tuple[Any, ...], kwds: dict[str, Any]) -> Any:
        return self._function(digest, payload)(*args, **kwds)


@functools.cache
def _pool_actor_class() -> ActorClass:
    # made on first use, not at import: rayr.util may import this module while rayr itself
    # is still initializing, before rayr.remote exists
    return ActorClass(_PoolProcess, {})


class _Slot:
    """One pool process: its actor, the calls it has in flight and the calls it was given."""

    __slots__ = ("handle", "load", "submitted")

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle
        self.load = 0
        self.submitted = 0


class _Function:
    """A function ready to ship: its digest and its pickle (inline bytes, or a stored ref)."""

    __slots__ = ("digest", "payload")

    def __init__(self, func: Callable[..., Any]) -> None:
        data = _pickle_function(func)
        self.digest = hashlib.sha1(data).hexdigest()
        # a top-level ObjectRef argument reaches the actor as its value, the bytes
        self.payload: bytes | ObjectRef = rayr.put(data) if len(data) > _INLINE_FUNCTION_LIMIT else data


class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async``.

    The outcome is fetched once, by whichever comes first: a caller of ``get``/``wait``/``ready``
    or the pool's watcher thread (only for results with callbacks), which then runs the callback.
    """

    def __init__(
        self,
        pool: Pool,
        refs: list[ObjectRef],
        combine: Callable[[list[Any]], Any],
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self._refs = refs
        self._combine = combine
        self._callback = callback
        self._error_callback = error_callback
        self._lock = threading.Lock()
        self._claimed = False
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        if not refs:
            self._finish()
        elif callback is not None or error_callback is not None:
            pool._watch_result(self)

    def _claim(self) -> bool:
        """Whether the caller is the one to fetch the outcome and run the callback."""
        with self._lock:
            owner = not self._claimed
            self._claimed = True
        return owner

    def _fetch(self) -> None:
        # only the claimant calls this, once every ref is complete
        try:
            self._value = self._combine(rayr.get(self._refs) if self._refs else [])
        except Exception as err:
            self._error = err
        self._refs = []

    def _deliver(self) -> None:
        try:
            if self._error is None:
                if self._callback is not None:
                    self._callback(self._value)
            elif self._error_callback is not None:
                self._error_callback(self._error)
        except Exception:
            # the stdlib would lose its result-handler thread here; we log and go on
            log.exception("A pool callback raised")
        finally:
            self._event.set()

    def _finish(self, timeout: float | None = None) -> None:
        """Fetch the outcome (every ref is complete) and run the callback, exactly once."""
        if self._claim():
            self._fetch()
            self._deliver()
        else:
            self._event.wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        if self._event.is_set():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        refs = self._refs
        if refs:
            ready, _ = rayr.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                return False
        self._finish(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._event.is_set()

    def ready(self) -> bool:
        """Whether the call has completed (successfully or not)."""
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass."""
        self._wait(timeout)

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the function's exception (as its original class).

        Raises:
            TimeoutError: not ready within ``timeout`` seconds (also a
                ``multiprocessing.TimeoutError`` and a builtin ``TimeoutError``).
        """
        if not self._wait(timeout):
            raise TimeoutError(f"The pool result was not ready within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


class IMapIterator(Iterator[Any]):
    """Results of ``imap`` (in order) or ``imap_unordered`` (as they complete).

    Chunks are submitted lazily, a bounded number ahead of the consumer. A chunk whose
    function raised re-raises that exception from ``next()`` (its remaining items are
    skipped); iteration may go on with the following chunks.
    """

    def __init__(
        self, pool: Pool, func: _Function, iterable: Iterable[Any], chunksize: int, star: bool, ordered: bool
    ) -> None:
        self._pool = pool
        self._func = func
        self._star = star
        self._ordered = ordered
        self._items = iter(iterable)
        self._chunksize = chunksize
        self._window = max(1, _IMAP_CHUNKS_PER_PROCESS * pool._processes)
        self._pending: deque[ObjectRef] = deque()
        self._buffer: deque[Any] = deque()
        self._exhausted = False
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and len(self._pending) < self._window:
            chunk = list(itertools.islice(self._items, self._chunksize))
            if not chunk:
                self._exhausted = True
                self._items = iter(())  # let the caller's iterable go
                return
            self._pending.append(
                self._pool._submit("run_chunk", self._func.digest, self._func.payload, chunk, self._star)
            )

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result.

        Raises:
            StopIteration: every result has been returned.
            TimeoutError: none arrived within ``timeout`` seconds.
        """
        while not self._buffer:
            if not self._pending:
                raise StopIteration
            if self._ordered:
                ref = self._pending[0]
                ready, _ = rayr.wait([ref], num_returns=1, timeout=timeout)
            else:
                ready, _ = rayr.wait(list(self._pending), num_returns=1, timeout=timeout)
            if not ready:
                raise TimeoutError(f"No pool result arrived within {timeout} s")
            ref = ready[0]
            self._pending.remove(ref)
            self._fill()
            self._buffer.extend(rayr.get(ref))
        return self._buffer.popleft()


def _kill_all(handles: list[ActorHandle]) -> None:
    if not rayr.is_initialized():
        return  # the driver disconnected: its job's actors are gone already
    for handle in handles:
        try:
            rayr.kill(handle)
        except Exception:
            log.exception("Could not stop pool process %r", handle)


def _flatten(chunks: list[list[Any]]) -> list[Any]:
    return [item for chunk in chunks for item in chunk]


def _first(values: list[Any]) -> Any:
    return values[0]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_chunksize(chunksize: Any) -> int:
    if not _is_positive_int(chunksize):
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
    return chunksize


class Pool:
    """A ``multiprocessing.Pool`` that runs its work as rayr actor calls on the cluster.

    Args:
        processes: number of pool processes (actors); default: the cluster's CPU count.
        initializer: called as ``initializer(*initargs)`` once in each pool process.
        initargs: arguments for ``initializer``.
        maxtasksperchild: replace a process after it ran this many calls (chunks).
        ray_address: cluster to join when this process is not connected yet.
        ray_remote_args: actor options for the pool processes, e.g. ``{"num_cpus": 1}``
            to reserve a CPU per process (by default they hold none while alive, so a pool
            never waits for free CPUs). By default a process that dies is restarted, its
            initializer rerun; the call it was running fails, the calls queued behind it run.

    Call ``close()`` and ``join()``, or ``terminate()`` (``with`` does), when done: until
    then the pool's actors live on, up to the driver's disconnection.

    Example::

        with Pool() as pool:
            squares = pool.map(square, range(100))
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None,
    ) -> None:
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)):
            raise TypeError(f"processes must be an int or None, got {type(processes).__name__}")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and not _is_positive_int(maxtasksperchild):
            raise ValueError("maxtasksperchild must be a positive int or None")
        init_payload = _pickle_function(initializer, "initializer") if initializer is not None else None
        if not rayr.is_initialized():
            rayr.init(address=ray_address, ignore_reinit_error=True)
        if processes is None:
            processes = max(1, int(rayr.cluster_resources().get("CPU", 1)))
        self._processes = processes
        self._initializer = init_payload
        self._initargs = tuple(initargs)
        self._maxtasksperchild = maxtasksperchild
        # a process that dies is replaced (with its initializer rerun), as the stdlib does
        self._actor_class = _pool_actor_class().options(**{"max_restarts": -1, **(ray_remote_args or {})})
        self._lock = threading.Lock()
        self._state = RUN
        self._joined = False
        self._inflight: dict[ObjectRef, _Slot] = {}
        self._retired: list[tuple[ActorHandle, ObjectRef]] = []  # (actor, its last call)
        self._callback_results: list[AsyncResult] = []
        self._watcher: threading.Thread | None = None
        self._next_slot = 0
        self._slots = [_Slot(self._new_actor()) for _ in range(processes)]

    # ------------------------------------------------------------ internals
    def _new_actor(self) -> ActorHandle:
        handle: ActorHandle = self._actor_class.remote(self._initializer, self._initargs)
        return handle

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _pick_slot(self) -> _Slot:
        # least loaded; ties go round-robin so equal work spreads over every process
        n = len(self._slots)
        order = [self._slots[(self._next_slot + i) % n] for i in range(n)]
        best = min(order, key=lambda slot: slot.load)
        self._next_slot = (self._slots.index(best) + 1) % n
        return best

    def _submit(self, method: str, *args: Any) -> ObjectRef:
        """One actor call on the least-loaded process; registers it with the watcher."""
        with self._lock:
            if self._state == TERMINATE or self._joined:
                raise ValueError("Pool not running")
            if not rayr.is_initialized():
                # submitting would start a fresh local cluster (auto-init) with no pool actors
                raise ValueError("Pool not running: rayr was shut down")
            slot = self._pick_slot()
            ref: ObjectRef = getattr(slot.handle, method).remote(*args)
            slot.load += 1
            slot.submitted += 1
            self._inflight[ref] = slot
            if self._maxtasksperchild is not None and slot.submitted >= self._maxtasksperchild:
                # calls from one process run in order, so the actor is done after this call
                self._retired.append((slot.handle, ref))
                self._slots[self._slots.index(slot)] = _Slot(self._new_actor())
            self._ensure_watcher()
        return ref

    def _ensure_watcher(self) -> None:
        # called with self._lock held
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, name="rayr-pool-watcher", daemon=True)
            self._watcher.start()

    def _watch_result(self, result: AsyncResult) -> None:
        with self._lock:
            self._callback_results.append(result)
            self._ensure_watcher()

    def _watch_loop(self) -> None:
        while True:
            # state.lock keeps shutdown() from running between the check and the rayr calls: a
            # rayr call in a disconnected process would start a new local cluster
            with context.state.lock:
                with self._lock:
                    if (
                        self._state == TERMINATE
                        or not rayr.is_initialized()
                        or not (self._inflight or self._retired or self._callback_results)
                    ):
                        self._watcher = None
                        return
                    refs = list(self._inflight)
                try:
                    ready: list[ObjectRef] = []
                    if refs:
                        ready, _ = rayr.wait(refs, num_returns=1, timeout=_WATCH_TICK_S)
                        if ready:
                            ready, _ = rayr.wait(refs, num_returns=len(refs), timeout=0)
                    finished, to_kill = self._on_ready(ready)
                    _kill_all(to_kill)
                    claimed = [result for result in finished if result._claim()]
                    for result in claimed:
                        result._fetch()
                except Exception:
                    log.exception("rayr pool watcher failed; retrying")
                    time.sleep(_WATCH_TICK_S)
                    continue
            for result in claimed:  # user callbacks run outside every lock
                result._deliver()

    def _on_ready(self, ready: list[ObjectRef]) -> tuple[list[AsyncResult], list[ActorHandle]]:
        with self._lock:
            for ref in ready:
                slot = self._inflight.pop(ref, None)
                if slot is not None:
                    slot.load -= 1
            inflight = self._inflight
            to_kill = [handle for handle, last in self._retired if last not in inflight]
            self._retired = [(handle, last) for handle, last in self._retired if last in inflight]
            finished = [r for r in self._callback_results if not any(ref in inflight for ref in r._refs)]
            self._callback_results = [r for r in self._callback_results if r not in finished]
        return finished, to_kill

    def _chunks(self, iterable: Iterable[Any], chunksize: int | None) -> list[list[Any]]:
        items = list(iterable)
        if chunksize is None:
            # as the stdlib: about four chunks per process
            chunksize = max(1, math.ceil(len(items) / (self._processes * 4)))
        _check_chunksize(chunksize)
        return [items[i : i + chunksize] for i in range(0, len(items), chunksize)]

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        star: bool,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
    ) -> AsyncResult:
        self._check_running()
        fn = _Function(func)
        refs = [
            self._submit("run_chunk", fn.digest, fn.payload, chunk, star)
            for chunk in self._chunks(iterable, chunksize)
        ]
        return AsyncResult(self, refs, _flatten, callback, error_callback)

    # ---------------------------------------------------------------- API
    def apply(
        self, func: Callable[..., Any], args: Sequence[Any] = (), kwds: dict[str, Any] | None = None
    ) -> Any:
        """``func(*args, **kwds)`` in a pool process; blocks until it returns."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Sequence[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Start ``func(*args, **kwds)`` in a pool process; returns its AsyncResult.

        ``callback(result)`` or ``error_callback(exception)`` runs in this process when it ends.
        """
        self._check_running()
        fn = _Function(func)
        ref = self._submit("run_call", fn.digest, fn.payload, tuple(args), dict(kwds or {}))
        return AsyncResult(self, [ref], _first, callback, error_callback)

    def map(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``[func(x) for x in iterable]`` computed in the pool, in order."""
        return self._map_async(func, iterable, chunksize, False, None, None).get()

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Like :meth:`map`, returning an AsyncResult of the whole list."""
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(
        self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[Any]:
        """``[func(*args) for args in iterable]`` computed in the pool, in order."""
        return self._map_async(func, iterable, chunksize, True, None, None).get()

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Like :meth:`starmap`, returning an AsyncResult of the whole list."""
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` for each item, in input order, computed ahead in the pool."""
        self._check_running()
        return IMapIterator(self, _Function(func), iterable, _check_chunksize(chunksize), False, True)

    def imap_unordered(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator:
        """Like :meth:`imap`, but results come as soon as they are ready, in any order."""
        self._check_running()
        return IMapIterator(self, _Function(func), iterable, _check_chunksize(chunksize), False, False)

    def close(self) -> None:
        """Accept no more work; work already submitted still runs. Then call :meth:`join`."""
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """Stop the pool processes at once; unfinished results fail with ActorDiedError."""
        with self._lock:
            if self._state == TERMINATE:
                return
            self._state = TERMINATE
            handles = [slot.handle for slot in self._slots] + [handle for handle, _ in self._retired]
            self._retired = []
            watcher = self._watcher
        _kill_all(handles)
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()

    def join(self) -> None:
        """Wait for the submitted work (and its callbacks) to finish, then stop the processes.

        Raises:
            ValueError: the pool was neither closed nor terminated.
        """
        with self._lock:
            if self._state == RUN:
                raise ValueError("Pool is still running")
            if self._state == TERMINATE or self._joined:
                return
        # the watcher exits once nothing is in flight, after running the last callbacks
        while True:
            with self._lock:
                watcher = self._watcher
            if watcher is None or watcher is threading.current_thread():
                break
            watcher.join()
        with self._lock:
            self._joined = True
            handles = [slot.handle for slot in self._slots] + [handle for handle, _ in self._retired]
            self._retired = []
        _kill_all(handles)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Pool state={self._state} processes={self._processes}>"
