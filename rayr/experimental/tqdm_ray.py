"""Ray's ``ray.experimental.tqdm_ray``: tqdm bars in tasks and actors, drawn by the driver.

A bar made in a worker draws nothing there. Each change of its state (count, total,
description, closed) is published on the job's log channel (``rayr/log_stream.py``), at most
once per ``flush_interval_s`` per bar, with a late flush so the last change before a pause
still arrives; the driver's :class:`BarManager` draws every bar of the job with real tqdm,
one line each, while the tasks run. A bar made in the driver goes to the same manager
directly, so the driver's bars and the workers' share the screen without overlapping.

Example::

    from rayr.experimental import tqdm_ray

    @rayr.remote
    def work(n):
        for _ in tqdm_ray.tqdm(range(n), desc="work"):
            ...
"""

from __future__ import annotations

import math
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

from rayr import context

if TYPE_CHECKING:
    from tqdm import tqdm as TqdmBar

# A driver's own bar redraws at tqdm's usual pace: there is no Redis to spare.
LOCAL_REDRAW_S = 0.1


@dataclass
class BarState:
    """One bar as it travels from where it is updated to the driver that draws it."""

    uuid: str
    desc: str = ""
    n: float = 0
    total: float | None = None
    position: int = 0  # order among the bars of one process
    unit: str = "it"
    unit_scale: bool | float = False
    closed: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form published in a log message's ``bars``."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> BarState:
        """Read a published state; fields this version does not know are ignored.

        Raises:
            ValueError: ``data`` is not a bar state.
        """
        if not isinstance(data, dict) or not isinstance(data.get("uuid"), str):
            raise ValueError(f"not a progress-bar state: {data!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class tqdm:  # noqa: N801 (Ray's name)
    """A progress bar usable in tasks and actors, drawn in the driver (Ray's ``tqdm_ray.tqdm``).

    A subset of tqdm's interface: ``update``, ``set_description``, ``refresh``, ``close``,
    iteration and ``with``. In a worker, state goes to the driver at most once per
    ``flush_interval_s`` (and ``refresh()`` / ``close()`` send it at once); in the driver the
    bar is drawn locally, next to the workers' bars.

    Args:
        iterable: what to iterate over; the bar advances by one per item and closes at the end.
        desc: label shown before the bar.
        total: expected number of steps; default ``len(iterable)`` where it has one.
        position: order among this process's bars (the driver assigns the screen lines).
        unit: name of one step (``"it"``).
        unit_scale: scale counts with SI prefixes (``True``) or by this factor.
        flush_interval_s: in a worker, the least time between two states sent to the driver.

    Raises:
        ValueError: ``flush_interval_s`` is negative or ``position`` is negative.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        position: int | None = None,
        unit: str | None = None,
        unit_scale: bool | float = False,
        flush_interval_s: float = 1.0,
    ) -> None:
        if not isinstance(flush_interval_s, int | float) or flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be a number >= 0, got {flush_interval_s!r}")
        if position is not None and position < 0:
            raise ValueError(f"position must be >= 0 or None, got {position!r}")
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self._state = BarState(uuid.uuid4().hex, desc or "", 0, total, position or 0, unit or "it",
                               unit_scale)
        self._hub = _hub()
        self._source = self._hub.source()  # None in a driver: drawn here
        self._interval = flush_interval_s if self._source is not None else LOCAL_REDRAW_S
        # _lock orders the states a bar sends: the flusher thread and the caller both send
        self._lock = threading.Lock()
        self._last_sent = -math.inf
        self._sent_closed = False
        self._pending = False  # a late send is scheduled: the hot path skips the hub's lock
        self._send()  # the bar appears at once, before its first step

    @property
    def n(self) -> float:
        """Steps done so far."""
        return self._state.n

    @property
    def total(self) -> float | None:
        """Expected number of steps (None: unknown)."""
        return self._state.total

    @total.setter
    def total(self, value: float | None) -> None:
        with self._lock:
            self._state.total = value
        self._changed()

    @property
    def desc(self) -> str:
        """The label shown before the bar."""
        return self._state.desc

    def update(self, n: float = 1) -> None:
        """Advance the bar by ``n`` steps."""
        with self._lock:
            if self._state.closed:
                return
            self._state.n += n
        self._changed()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the label; with ``refresh=False`` it travels with the next update."""
        with self._lock:
            self._state.desc = desc or ""
        if refresh:
            self._changed()

    def refresh(self) -> None:
        """Send the current state now, whatever the flush interval."""
        self._send()

    def close(self) -> None:
        """Finish the bar: the driver removes it and prints its last state as a line."""
        with self._lock:
            if self._state.closed:
                return
            self._state.closed = True
        self._hub.cancel(self)
        self._send()

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("this tqdm_ray.tqdm has no iterable: pass one, or call update()")
        try:
            for item in self._iterable:
                yield item
                self.update(1)  # as tqdm: an item counts once its loop body is done
        finally:
            self.close()

    def __enter__(self) -> tqdm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _changed(self) -> None:
        """Send now, or schedule a send at the end of the flush interval."""
        with self._lock:
            due = self._last_sent + self._interval
            if time.monotonic() < due:
                if not self._pending:
                    self._pending = True
                    self._hub.schedule(self, due)
                return
        self._send()

    def _send(self) -> None:
        with self._lock:
            if self._sent_closed:  # a late flush after close() has nothing to add
                return
            self._sent_closed = self._state.closed
            self._last_sent = time.monotonic()
            self._pending = False
            self._hub.deliver(self._source, replace(self._state))


class BarHub:
    """This process's side of tqdm_ray: where bar states go, and the late flusher.

    A bar updated inside its flush interval is scheduled here; one thread per process sends
    each scheduled bar's state when its interval ends, so the driver never shows a stale
    count for longer than ``flush_interval_s``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[tqdm, float] = {}  # bars with unsent changes -> when to send them
        self._thread: threading.Thread | None = None
        self._manager: BarManager | None = None  # a driver's, made on first use

    @property
    def manager(self) -> BarManager:
        """The driver's bar manager (made on first use)."""
        with self._cond:
            if self._manager is None:
                self._manager = BarManager()
            return self._manager

    def existing_manager(self) -> BarManager | None:
        """The driver's bar manager if one was made."""
        return self._manager

    @staticmethod
    def source() -> tuple[str, str] | None:
        """(job hex, task name) of the running task in a worker; None in a driver."""
        executor = context.state.executor
        if executor is None:
            return None
        return executor.output.source if executor.output is not None else ("", "")

    def deliver(self, source: tuple[str, str] | None, state: BarState) -> None:
        """Publish a worker bar's state to its job's driver, or draw a driver bar's here."""
        if source is None:
            self.manager.apply("", [state.to_wire()])
            return
        executor = context.state.executor
        if executor is not None and executor.output is not None:
            executor.output.publish_bars(source, [state.to_wire()])

    def schedule(self, bar: tqdm, due: float) -> None:
        """Send ``bar``'s state at ``due`` (monotonic time) unless it is sent before."""
        with self._cond:
            if bar in self._due:
                return
            self._due[bar] = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rayr-tqdm-flush", daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self, bar: tqdm) -> None:
        """Forget a scheduled send (the bar is about to send its last state itself)."""
        with self._cond:
            self._due.pop(bar, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                ready = [bar for bar, due in self._due.items() if due <= now]
                for bar in ready:
                    del self._due[bar]
                if not ready:
                    self._cond.wait(min(self._due.values()) - now if self._due else None)
                    continue
            for bar in ready:
                bar._send()


def _hub() -> BarHub:
    state = context.state
    with state.lock:
        if state.bars is None:
            state.bars = BarHub()
        return state.bars


def instance() -> BarManager:
    """This driver's :class:`BarManager` (Ray's ``tqdm_ray.instance()``)."""
    return _hub().manager


def close_driver_bars() -> None:
    """Finish every bar still drawn (at ``shutdown()``: no more states will arrive)."""
    bars = context.state.bars
    manager = bars.existing_manager() if bars is not None else None
    if manager is not None:
        manager.close_all()


def safe_print(*args: Any, **kwargs: Any) -> None:
    """``print`` that does not garble the bars: in the driver they step aside while it prints.

    In a worker it is ``print``: the driver already moves its bars aside for worker output.
    """
    if context.state.executor is not None:
        print(*args, **kwargs)
        return
    with instance().suspended():
        print(*args, **kwargs)


class ShownBar(NamedTuple):
    """A bar as the driver draws it now."""

    line: int  # 0 is the top bar
    source: str  # "(name pid=..., node=...)" of a worker's bar; "" for the driver's own
    state: BarState


class _Shown:
    """One bar on the driver's screen: its last state and the tqdm drawing it."""

    def __init__(self, source: str, state: BarState, seq: int) -> None:
        self.source = source
        self.state = state
        self.seq = seq  # arrival order
        self.line = -1  # not drawn yet
        self.bar: TqdmBar | None = None

    def label(self, desc: str) -> str:
        return f"{self.source} {desc}" if self.source else desc

    def draw_at(self, line: int, file: TextIO) -> None:
        """Draw on screen line ``line`` (a moved bar must be cleared from its old one first)."""
        self.line = line
        if self.bar is not None:
            self.bar.pos = -line  # tqdm's own encoding of a fixed position
            self.bar.refresh()
            return
        from tqdm import tqdm as real_tqdm  # imported on the first bar: `import rayr` stays fast

        s = self.state
        # every state that arrives is drawn: the worker already limits how often they come
        self.bar = real_tqdm(desc=self.label(s.desc), total=s.total, initial=s.n, position=line, unit=s.unit,
                             unit_scale=s.unit_scale, leave=False, file=file, mininterval=0, miniters=1)

    def update(self, state: BarState) -> None:
        bar = self.bar
        assert bar is not None
        if state.desc != self.state.desc:
            bar.set_description(self.label(state.desc), refresh=False)
        bar.total = state.total
        bar.n = state.n  # the rate shown is the average since the bar started
        self.state = state
        bar.refresh()

    def finish(self) -> str:
        """Remove the bar from the screen; its last state as a line of text."""
        assert self.bar is not None
        final = str(self.bar)
        self.bar.close()
        return final


class BarManager:
    """The driver's bars: every bar of this job, drawn with tqdm, one screen line each.

    Bars are grouped by the process that made them (in order of appearance) and ordered by
    ``position`` within a process; when a bar closes the ones below move up. A closed bar
    leaves its last state as an ordinary line above the bars.

    Args:
        file: where bars are drawn; default ``sys.stderr`` (when each bar first appears).
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file
        self._lock = threading.RLock()  # the log printer's thread and the driver's own bars
        self._bars: dict[str, _Shown] = {}  # uuid -> bar, in arrival order
        # sources with bars drawn -> their rank: a process's bars stay together, and in place
        # while it has any, even when its first bar closes
        self._groups: dict[str, int] = {}
        self._seq = 0

    def apply(self, source: str, states: list[dict[str, Any]]) -> None:
        """Draw these states (wire form) of bars made by ``source`` ("" for this driver)."""
        with self._lock:
            for data in states:
                try:
                    state = BarState.from_wire(data)
                except (TypeError, ValueError):
                    continue  # not ours, or from an incompatible version: nothing to draw
                self._apply(source, state)

    def _apply(self, source: str, state: BarState) -> None:
        shown = self._bars.get(state.uuid)
        if shown is None:
            shown = self._bars[state.uuid] = _Shown(source, state, self._seq)
            self._groups.setdefault(source, self._seq)
            self._seq += 1
            self._layout()
        else:
            shown.update(state)
        if state.closed:
            self._finish(shown)

    def _finish(self, shown: _Shown) -> None:
        final = shown.finish()
        del self._bars[shown.state.uuid]
        if not any(other.source == shown.source for other in self._bars.values()):
            del self._groups[shown.source]
        self._layout()
        with self.suspended():
            self._file().write(final + "\n")
            self._file().flush()

    def _file(self) -> TextIO:
        return self.file or sys.stderr

    def _layout(self) -> None:
        """Give each bar its line; clear the bars that move, then draw them at their lines."""
        order = sorted(self._bars.values(), key=lambda s: (self._groups[s.source], s.state.position, s.seq))
        moving = [(line, shown) for line, shown in enumerate(order) if shown.line != line]
        for _, shown in moving:
            if shown.bar is not None:
                shown.bar.clear()
        for line, shown in moving:
            shown.draw_at(line, self._file())

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Clear the bars while the caller writes ordinary output; redraw them after."""
        with self._lock:
            drawn = [shown.bar for shown in self._bars.values() if shown.bar is not None]
            for bar in drawn:
                bar.clear()
            try:
                yield
            finally:
                for bar in drawn:
                    bar.refresh()

    def bars(self) -> list[ShownBar]:
        """The bars drawn now, top line first (copies: they do not change under the caller)."""
        with self._lock:
            shown = sorted(self._bars.values(), key=lambda s: s.line)
            return [ShownBar(s.line, s.source, replace(s.state)) for s in shown]

    def close_all(self) -> None:
        """Finish every bar, each leaving its last state as a line."""
        with self._lock:
            for shown in list(self._bars.values()):
                self._finish(shown)


__all__ = ["BarManager", "BarState", "ShownBar", "instance", "safe_print", "tqdm"]
