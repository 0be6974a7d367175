"""What this process saw of tasks, sent to the GCS in batches (see gcs/task_events.py).

On the hot path an event is one ``deque.append`` of a tuple (atomic, no lock, no Redis), or a
dict set for a task starting; the inbox thread folds the log into per-task views every
``task_events_flush_s`` and sends them as one script call per job and side on the command
stream. What a process remembers of a task goes when the task ends. With ``task_events``
off, the core worker makes no TaskEvents at all.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rayr import serialization
from rayr.exceptions import RayTaskError
from rayr.gcs import records as rec
from rayr.gcs import task_events as tev
from rayr.gcs.address import spread_slot
from rayr.gcs.client import GcsClient
from rayr.gcs.command_stream import CommandStream
from rayr.keys import spread_tag
from rayr.resources import shape_key

if TYPE_CHECKING:
    from rayr.config import Settings
    from rayr.task_spec import TaskSpec

# log entry kinds
_SUBMIT, _QUEUED, _OWNER_END, _EXEC_END = range(4)
FLUSH_AT = 5000  # a log this long is sent without waiting for the interval


def error_summary(record: bytes) -> tuple[str, str]:
    """(type name, message) of an error record, for a task's failed view."""
    try:
        err = serialization.deserialize(memoryview(record)[1:])
    except Exception as cant:  # an exception class the reader cannot import
        return "Error", f"(could not read the error: {cant})"
    if isinstance(err, RayTaskError):
        cause = err.cause
        name = type(cause).__name__ if cause is not None else "RayTaskError"
        text = str(cause) if cause is not None else str(err)
        return name, text
    return type(err).__name__, str(err)


class TaskEvents:
    """This process's task event log: as owner and as executor.

    The executor's view says everything about a task that ran; the owner writes its own view
    only for what the executor cannot know: a task still waiting at a flush (for arguments or
    for a node), one that failed without running (cancelled, its actor dead), and a task's
    parent. A task that was submitted, ran and returned between two flushes costs one view.
    """

    def __init__(self, *, gcs: GcsClient, commands: CommandStream, settings: Settings,
                 node_hex: str, worker_hex: str) -> None:
        self._gcs = gcs
        self._commands = commands
        self._settings = settings
        self._worker = worker_hex
        self._who = (node_hex, worker_hex, os.getpid())
        self._log: deque[tuple[Any, ...]] = deque()  # appended from any thread, drained by one
        self._due = 0.0
        self._flush_lock = threading.Lock()
        # owner: unfinished tasks -> [spec, parent, shape, t_args, t_node, written]
        self._owned: dict[bytes, list[Any]] = {}
        self._changed: set[bytes] = set()  # owned views changed since the last flush
        # executor: running tasks -> (spec, received, started); a dict set and pop are atomic
        self._running: dict[bytes, tuple[TaskSpec, float, float]] = {}
        self._running_written: set[bytes] = set()
        # executor: finished tasks' views, by job, flat (task id, view, ...): ready to send
        self._ended: dict[str, list[Any]] = {}
        self._ended_lock = threading.Lock()  # executor threads append, the flush swaps
        self._heads: dict[tuple[Any, ...], tuple[dict[str, float], bytes]] = {}

    # ----------------------------------------------------------- the hot path
    def submitted(self, spec: TaskSpec, parent: bytes | None, shape: str, waiting: bool) -> None:
        self._log.append((_SUBMIT, spec.task_id, time.time(), spec, parent, shape, waiting))

    def queued(self, task_id: bytes) -> None:
        """A task that waited for its arguments went to its stream or mailbox."""
        self._log.append((_QUEUED, task_id, time.time()))

    def owner_done(self, task_id: bytes, record: bytes) -> None:
        """The task's first result reached its owner (an error record if it failed)."""
        self._log.append((_OWNER_END, task_id, time.time(), record if record[0] == rec.ERROR else None))

    def started(self, spec: TaskSpec, received: float) -> None:
        self._running[spec.task_id] = (spec, received, time.time())

    def ended(self, spec: TaskSpec, records: list[bytes]) -> None:
        """The task's results are being delivered: its view is made now (cheap: packed times
        after a cached head) and sent with the next flush."""
        t_end = time.time()
        _, received, running = self._running.pop(spec.task_id, None) or (spec, t_end, None)
        error = records[0] if records and records[0][0] == rec.ERROR else None
        if error is not None:  # rare: reading the error is left to the flush
            self._log.append((_EXEC_END, spec.task_id, t_end, spec, (received, running, error)))
            return
        view = tev.encode_exec(self._what(spec), spec.attempt, received, running, t_end, None)
        with self._ended_lock:
            flat = self._ended.get(spec.job_hex)
            if flat is None:
                flat = self._ended[spec.job_hex] = []
            flat += (spec.task_id, view)

    # ---------------------------------------------------------------- flushing
    def flush_due(self) -> None:
        if (self._log or self._running or self._ended) and (
            time.monotonic() >= self._due or len(self._log) >= FLUSH_AT
        ):
            self.flush()

    def flush(self) -> None:
        """Fold the log into views and send them (on the command stream, no waiting)."""
        with self._flush_lock:  # the inbox thread, and anyone who wants the events now
            self._flush()

    def _flush(self) -> None:
        self._due = time.monotonic() + self._settings.task_events_flush_s
        with self._ended_lock:
            exec_args, self._ended = self._ended, {}
        log = self._log
        # what was logged so far; later entries wait for the next flush
        entries = [log.popleft() for _ in range(len(log))]
        # submitted and returned within this batch: the executor's view says it all (see above)
        done = {e[1] for e in entries if e[0] == _OWNER_END and e[3] is None}
        owner_args: dict[str, list[Any]] = {}
        owned = self._owned
        for entry in entries:
            kind = entry[0]
            if kind == _SUBMIT:
                if entry[1] in done and entry[4] is None:
                    continue
            elif kind == _OWNER_END:
                if entry[1] not in owned:
                    continue  # its submission was skipped just above, or came before events
            elif kind == _EXEC_END:  # a failed task: its view is made here, with the error read
                _, task_id, t_end, spec, (received, running, error) = entry
                view = tev.encode_exec(self._what(spec), spec.attempt, received, running, t_end,
                                       error_summary(error))
                exec_args.setdefault(spec.job_hex, []).extend((task_id, view))
                continue
            self._fold_owner(entry, owner_args)
        settled = time.time() - self._settings.task_events_flush_s
        self._still_waiting(owner_args, settled)
        self._still_running(exec_args, settled)
        by_tag: dict[int, list[Any]] = {}
        for job, command in [*self._commands_for(owner_args, self._gcs.keys.task_events_owner),
                             *self._commands_for(exec_args, self._gcs.keys.task_events_exec)]:
            by_tag.setdefault(spread_tag(job), []).append(command)
        for tag, commands in by_tag.items():  # a job's tables live on its spread tag's master
            self._commands.for_slot(spread_slot(self._gcs.keys, tag)).send(commands)

    def _still_waiting(self, owner_args: dict[str, list[Any]], settled: float) -> None:
        """Tasks still waiting a flush interval after their last change: the owner says so (a
        task about to run, as most of a burst are, would only cost a view written twice)."""
        later: set[bytes] = set()
        for task_id in self._changed:
            pending = self._owned.get(task_id)
            if pending is None:
                continue
            if (pending[4] or pending[3]) > settled:
                later.add(task_id)
                continue
            pending[5] = True
            owner_args.setdefault(pending[0].job_hex, []).extend(
                (task_id, self._owner_value(pending, None, None)))
        self._changed = later

    def _still_running(self, exec_args: dict[str, list[Any]], settled: float) -> None:
        """Tasks running for a flush interval: the executor says so, once."""
        running_now = dict(self._running)
        if self._running_written:  # forget the ended ones
            self._running_written.intersection_update(running_now)
        for task_id, (spec, received, running) in running_now.items():
            if running < settled and task_id not in self._running_written:
                self._running_written.add(task_id)
                view = tev.encode_exec(self._what(spec), spec.attempt, received, running, None, None)
                exec_args.setdefault(spec.job_hex, []).extend((task_id, view))

    def _fold_owner(self, entry: tuple[Any, ...], views: dict[str, list[Any]]) -> None:
        kind, task_id, ts = entry[0], entry[1], entry[2]
        if kind == _SUBMIT:
            _, _, _, spec, parent, shape, waiting = entry
            self._owned[task_id] = [spec, parent, shape, ts if waiting else None,
                                    None if waiting else ts, False]
            self._changed.add(task_id)
            return
        if kind == _QUEUED:
            view = self._owned.get(task_id)
            if view is not None:
                view[4] = ts
                self._changed.add(task_id)
            return
        view = self._owned.pop(task_id, None)
        error = entry[3]
        # a task that ran says all of this in its executor's view; the owner writes only what
        # the executor cannot: an end without a run (error), or the end of a view it wrote
        if view is not None and (error is not None or view[5] or view[1] is not None):
            summary = error_summary(error) if error is not None else None
            views.setdefault(view[0].job_hex, []).extend((task_id, self._owner_value(view, ts, summary)))

    def _owner_value(self, view: list[Any], t_end: float | None, error: tuple[str, str] | None) -> str:
        spec, parent, shape, t_args, t_node = view[:5]
        return tev.encode_owner(spec.kind, spec.name, spec.function_name, spec.actor_id,
                                parent.hex() if parent else "", self._worker, shape, t_args, t_node,
                                t_end, error)

    def _what(self, spec: TaskSpec) -> bytes:
        """The cached head of this process's views of tasks like ``spec``."""
        key = (spec.function_name, spec.name, spec.actor_id, spec.kind)
        cached = self._heads.get(key)
        if cached is not None and cached[0] == spec.resources:
            return cached[1]
        if len(self._heads) > 10_000:  # many distinct names (e.g. per-call names): start over
            self._heads.clear()
        what = tev.exec_what(*self._who, spec.kind, spec.name, spec.function_name, spec.actor_id,
                             shape_key(spec.resources))
        self._heads[key] = (spec.resources, what)
        return what

    def _commands_for(self, by_job: dict[str, list[Any]], table: Any) -> list[tuple[str, Any]]:
        """(job, its RECORD_TASK_EVENTS) per job, of its flat (task id, view, ...) list."""
        settings = self._settings
        return [
            (job, self._gcs.task_events_command(table(job), job, flat, settings.task_events_max_per_job,
                                                settings.task_events_retention_s))
            for job, flat in by_job.items() if flat
        ]
