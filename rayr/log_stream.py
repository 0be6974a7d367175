"""Worker output to the driver: capture a worker's stdout/stderr, publish it per job.

A worker's file descriptors 1 and 2 are redirected into pipes; a thread per pipe copies
everything to the worker's log file (so nothing is lost, C-level output included) and
publishes whole lines on the job's log channel. A driver started with ``log_to_driver``
subscribes to its job's channel and prints each line with a Ray-style prefix. Pub/sub is
at-most-once, which suits logs: the log files keep the full record.

The same channel carries progress-bar states (``rayr.experimental.tqdm_ray``): a message with
``bars`` instead of ``lines``, published by the bar itself rather than printed, so bar states
never reach the log file, never splice into a half-printed line, and survive a task that
redirects ``sys.stdout``. The driver's printer hands them to a ``BarSink`` that draws them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, TextIO

import redis

MAX_PARTIAL = 64 * 1024  # a "line" longer than this is published in pieces
# Written in-band before a task's output, so each line is attributed to the task that
# printed it even though the pipes are read asynchronously.
MARKER = b"\x00rayr-source\x00"


class OutputCapture:
    """Redirects this process's stdout/stderr and publishes what is printed, line by line."""

    def __init__(self, publish: Callable[[str, dict[str, Any]], None]):
        self._publish = publish
        self._log_fd = os.dup(1)  # the worker's log file, as the raylet opened it
        self._threads: list[threading.Thread] = []
        self._source: tuple[str, str] = ("", "")

    @property
    def source(self) -> tuple[str, str]:
        """(job hex, name) that output is attributed to now; ("", "") before the first task."""
        return self._source

    def publish_bars(self, source: tuple[str, str], states: list[dict[str, Any]]) -> None:
        """Publish progress-bar states on ``source``'s job channel (dropped if Redis is down)."""
        job, name = source
        if not (job and states):
            return
        try:
            self._publish(job, {"pid": os.getpid(), "name": name, "bars": states})
        except Exception:  # a bar is a view, not a record: a lost state is redrawn by the next
            pass

    def set_source(self, job_hex: str, name: str) -> None:
        """Attribute output from now on to ``name`` in job ``job_hex``."""
        if (job_hex, name) == self._source:
            return
        self._source = (job_hex, name)
        marker = MARKER + f"{job_hex}\x00{name}".encode() + b"\n"
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            try:
                stream.flush()  # output printed so far belongs to the previous source
            except (OSError, ValueError):
                pass
            os.write(fd, marker)

    def start(self) -> None:
        for fd, is_err in ((1, False), (2, True)):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(target=self._pump, args=(read_end, is_err), daemon=True,
                                      name=f"rayr-output-{fd}")
            thread.start()
            self._threads.append(thread)
        # Python buffers fully when stdout is not a terminal; line buffering keeps prints timely
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)

    def _pump(self, fd: int, is_err: bool) -> None:
        partial = b""
        job, name = "", ""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            partial += data
            *lines, partial = partial.split(b"\n")
            if len(partial) > MAX_PARTIAL:
                lines.append(partial)
                partial = b""
            batch: list[str] = []
            for line in lines:
                if line.startswith(MARKER):
                    self._emit(job, name, is_err, batch)
                    batch = []
                    job, _, raw_name = line[len(MARKER):].decode(errors="replace").partition("\x00")
                    name = raw_name
                    continue
                os.write(self._log_fd, line + b"\n")
                batch.append(line.decode(errors="replace"))
            self._emit(job, name, is_err, batch)

    def _emit(self, job: str, name: str, is_err: bool, lines: list[str]) -> None:
        if not (job and lines):
            return
        try:
            self._publish(job, {"pid": os.getpid(), "name": name, "err": is_err, "lines": lines})
        except Exception:  # Redis unreachable: the log file still has the output
            pass


def encode(node_hex: str, payload: dict[str, Any]) -> str:
    return json.dumps({**payload, "node": node_hex})


class Batch(NamedTuple):
    """One published message, as the driver reads it."""

    source: str  # "(name pid=..., node=...)": who printed it
    is_err: bool
    lines: list[str]
    bars: list[dict[str, Any]]  # progress-bar states (rayr.experimental.tqdm_ray wire form)

    def text(self) -> str:
        """The lines, each prefixed with the source, ready to write at once."""
        return "".join(f"{self.source} {line}\n" for line in self.lines)


def parse(message: bytes | str) -> Batch:
    """Read one published message; ValueError or KeyError if it is not one."""
    data = json.loads(message)
    source = f"({data.get('name') or 'worker'} pid={data['pid']}, node={data['node'][:6]})"
    return Batch(source, bool(data.get("err")), list(data.get("lines", ())), list(data.get("bars", ())))


class BarSink(Protocol):
    """Where the driver's printer sends progress-bar states (the driver's bar manager)."""

    def apply(self, source: str, states: list[dict[str, Any]]) -> None:
        """Draw these states of bars from ``source``."""

    def suspended(self) -> AbstractContextManager[None]:
        """Bars cleared from the terminal while ordinary output is written, redrawn after."""


class LogPrinter:
    """Driver side: prints the job's worker output as it arrives, whole lines only."""

    def __init__(self, pubsub: Any, out: TextIO | None = None, err: TextIO | None = None,
                 bars: BarSink | None = None) -> None:
        self._pubsub = pubsub
        self._out = out
        self._err = err
        self._bars = bars  # draws the progress-bar states; without one they are dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayr-log-printer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            except Exception:
                if self._stop.is_set():
                    return
                continue
            if msg is None or msg.get("type") != "message":
                continue
            try:
                batch = parse(msg["data"])
            except (ValueError, KeyError, TypeError):
                continue
            if batch.bars and self._bars is not None:
                try:
                    self._bars.apply(batch.source, batch.bars)
                except (OSError, ValueError):  # the terminal went away: worker lines still print
                    pass
            if batch.lines:
                self._write(batch)

    def _write(self, batch: Batch) -> None:
        stream = (self._err or sys.stderr) if batch.is_err else (self._out or sys.stdout)
        # bars step aside while lines are written, so a line never lands inside a bar
        with self._bars.suspended() if self._bars is not None else contextlib.nullcontext():
            try:
                stream.write(batch.text())  # one write per batch: lines never interleave mid-line
                stream.flush()
            except (OSError, ValueError):
                pass

    def _wake(self) -> None:
        """Publish an empty message, so the thread stops now rather than at its read's timeout."""
        try:
            client = redis.Redis(connection_pool=self._pubsub.connection_pool)
            for channel in list(self._pubsub.channels):
                client.publish(channel, b"")
        except Exception:  # it stops at its timeout all the same
            pass

    def stop(self, drain_s: float = 0.2) -> None:
        """Stop after printing what arrives within ``drain_s`` (output of just-finished tasks)."""
        self._stop.wait(drain_s)
        self._stop.set()
        self._wake()
        self._thread.join(timeout=2)
        try:
            self._pubsub.close()
        except Exception:
            pass
