"""Task events in the GCS: what owners and executors saw of each task, in one place.

Each job has two hashes keyed by the 16-byte task id: ``tev:<job>`` holds the owner's view
(what the task is, when it waited for arguments and for a node, when its result came back)
and ``tex:<job>`` the executor's (node, worker, pid, attempt, when it was received, started
and ended, its error). Each side rewrites its whole view of a task as it changes, in
batches (``RECORD_TASK_EVENTS``), so reading a task is two hash reads and no replay. A view
is a few fields joined by ``SEP``: cheap to build on the hot path, no JSON. Both carry the
job's spread tag (``keys.spread_tag`` of the job id): on a Redis Cluster they live on that
tag's master and are read and written through ``GcsClient.shard`` and the command stream's
``for_slot``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rayr.gcs.client import GcsClient
from rayr.keys import spread_tag

SEP = "\x1f"
OWNER_TAG, EXEC_TAG = "o1", "x1"
KIND_NAMES = ("NORMAL_TASK", "ACTOR_CREATION_TASK", "ACTOR_TASK")  # by task_spec kind
# Ray's task states, in the order a task moves through them
PENDING_ARGS_AVAIL = "PENDING_ARGS_AVAIL"
PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"
SUBMITTED_TO_WORKER = "SUBMITTED_TO_WORKER"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
STATES = (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, SUBMITTED_TO_WORKER, RUNNING, FINISHED, FAILED)
MAX_MESSAGE = 500  # characters of an error message kept


def _ts(value: float | None) -> str:
    return "" if value is None else repr(value)


def _clean(text: str) -> str:
    return text.replace(SEP, " ")


def encode_owner(
    kind: int, name: str, func: str, actor_id: str, parent: str, owner: str, shape: str,
    t_args: float | None, t_node: float | None, t_end: float | None, error: tuple[str, str] | None,
) -> str:
    """The owner's view of one task."""
    etype, emsg = error or ("", "")
    return SEP.join((OWNER_TAG, str(kind), _clean(name), _clean(func), actor_id, parent, owner, shape,
                     _ts(t_args), _ts(t_node), _ts(t_end), "1" if error else "", etype,
                     _clean(emsg[:MAX_MESSAGE])))


def exec_what(node: str, worker: str, pid: int, kind: int, name: str, func: str, actor_id: str,
              shape: str) -> bytes:
    """The head of an executor's views: who ran the task and what it is (the same for many
    tasks, so executors cache it)."""
    return SEP.join((EXEC_TAG, node, worker, str(pid), str(kind), _clean(name), _clean(func),
                     actor_id, shape, "")).encode()


_TIMES = struct.Struct("<Hddd")  # attempt, received, started, ended (NaN: not yet)
_NAN = float("nan")
_STATE_OF = {ord("F"): FINISHED, ord("X"): FAILED}
_EXEC_TEXT_FIELDS = 9  # SEP-separated fields in exec_what before the packed tail


def encode_exec(what: bytes, attempt: int, t_sub: float, t_run: float | None, t_end: float | None,
                error: tuple[str, str] | None) -> bytes:
    """The executor's view of one task attempt: ``exec_what``, then the attempt and times
    packed, the end state, and the error if it failed. It says what the task is, so a task
    that ran between two of its owner's flushes needs no owner view at all."""
    times = _TIMES.pack(attempt, t_sub, _NAN if t_run is None else t_run, _NAN if t_end is None else t_end)
    if error is None:
        return what + times + (b"-" if t_end is None else b"F")
    return what + times + b"X" + (error[0] + SEP + _clean(error[1][:MAX_MESSAGE])).encode()


ExecView = tuple[list[str], int, float | None, float | None, float | None, str, str, str]


def _decode_exec(view: bytes) -> ExecView:
    """(text fields, attempt, received, started, ended, end state, error type, message)."""
    parts = view.split(SEP.encode(), _EXEC_TEXT_FIELDS)
    text = [p.decode(errors="replace") for p in parts[:_EXEC_TEXT_FIELDS]]
    tail = parts[_EXEC_TEXT_FIELDS]
    attempt, sub, run, end = _TIMES.unpack_from(tail)
    state = _STATE_OF.get(tail[_TIMES.size], "")
    etype, _, emsg = tail[_TIMES.size + 1:].decode(errors="replace").partition(SEP)

    def t(x: float) -> float | None:
        return None if math.isnan(x) else x

    return text, attempt, t(sub), t(run), t(end), state, etype, emsg


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@dataclass
class TaskRecord:
    """One task as both sides saw it, with Ray's field names (``rayr.util.state.TaskState``)."""

    task_id: str
    job_id: str
    state: str
    name: str = ""
    func_or_class_name: str = ""
    type: str = "NORMAL_TASK"
    attempt_number: int = 0
    actor_id: str | None = None
    parent_task_id: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    worker_pid: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    required_resources: dict[str, float] = field(default_factory=dict)
    language: str = "PYTHON"
    # (state, time in ms) of each transition seen, in order
    events: list[dict[str, Any]] = field(default_factory=list)
    creation_time_ms: int | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None


def merge(task_id: bytes, job_hex: str, owner: bytes | None, executed: bytes | None) -> TaskRecord:
    """The task from its two views (either may be missing: events can be turned off in one
    process, or dropped once a job's table is full)."""
    from rayr.resources import parse_shape

    record = TaskRecord(task_id=task_id.hex(), job_id=job_hex, state=PENDING_NODE_ASSIGNMENT)
    times: dict[str, float] = {}
    owner_failed = owner_ended = False
    if owner:
        o = owner.decode(errors="replace").split(SEP)
        kind = int(o[1]) if o[1].isdigit() else 0
        record.type = KIND_NAMES[kind] if kind < len(KIND_NAMES) else "NORMAL_TASK"
        record.name, record.func_or_class_name = o[2], o[3]
        record.actor_id, record.parent_task_id = o[4] or None, o[5] or None
        record.required_resources = parse_shape(o[7]) if o[7] else {}
        for state, text in ((PENDING_ARGS_AVAIL, o[8]), (PENDING_NODE_ASSIGNMENT, o[9])):
            if text:
                times[state] = float(text)
        owner_ended, owner_failed = bool(o[10]), o[11] == "1"
        if owner_failed:
            times[FAILED] = float(o[10])
            record.error_type, record.error_message = o[12] or None, o[13] or None
        elif owner_ended:
            times[FINISHED] = float(o[10])
    if executed:
        x, attempt, sub, run, end, state, etype, emsg = _decode_exec(executed)
        record.node_id, record.worker_id = x[1] or None, x[2] or None
        record.worker_pid = int(x[3]) if x[3].isdigit() else None
        kind = int(x[4]) if x[4].isdigit() else 0
        record.type = KIND_NAMES[kind] if kind < len(KIND_NAMES) else "NORMAL_TASK"
        record.name, record.func_or_class_name = x[5], x[6]
        record.actor_id = x[7] or record.actor_id
        if x[8]:
            record.required_resources = parse_shape(x[8])
        record.attempt_number = attempt
        for which, value in ((SUBMITTED_TO_WORKER, sub), (RUNNING, run)):
            if value is not None:
                times[which] = value
        if state and end is not None:  # the executor's end wins: it knows the attempt that ran
            times.pop(FINISHED, None)
            times.pop(FAILED, None)
            times[state] = end
            if state == FAILED:
                record.error_type, record.error_message = etype or None, emsg or None
    ordered = [s for s in STATES if s in times]
    if ordered:
        record.state = ordered[-1]
    # times in the events keep their microseconds (a timeline of short tasks needs them)
    record.events = [{"state": s, "created_ms": times[s] * 1000} for s in ordered]
    record.creation_time_ms = _ms(times[ordered[0]]) if ordered else None
    record.start_time_ms = _ms(times.get(RUNNING))
    end = times.get(FINISHED, times.get(FAILED))
    record.end_time_ms = _ms(end)
    return record


def task_jobs(gcs: GcsClient) -> list[str]:
    """The jobs in the job table, whose task tables may hold views."""
    return sorted(raw.decode() for raw in gcs.r.smembers(gcs.keys.jobs))


def read_tasks(gcs: GcsClient, jobs: Iterable[str], task_ids: list[bytes] | None = None,
               limit: int | None = None) -> Iterator[TaskRecord]:
    """Tasks of ``jobs`` (all, the given ids, or at most ``limit``), owner views first: a
    task whose owner never reported (events off there) is still listed from its executor."""
    keys = gcs.keys
    left = limit
    for job in jobs:
        owner_key, exec_key = keys.task_events_owner(job), keys.task_events_exec(job)
        r = gcs.shard(spread_tag(job))
        if task_ids is not None:
            ids = [t for t in task_ids if t.hex().startswith(job)]
            if not ids:
                continue
            with r.pipeline(transaction=False) as p:
                p.hmget(owner_key, ids)
                p.hmget(exec_key, ids)
                owners, execs = p.execute()
            for tid, o, x in zip(ids, owners, execs, strict=True):
                if o or x:
                    yield merge(tid, job, o, x)
            continue
        seen: set[bytes] = set()
        for table, other, mine_first in ((owner_key, exec_key, True), (exec_key, owner_key, False)):
            cursor = 0
            while True:
                cursor, chunk = r.hscan(table, cursor, count=1000)
                batch = [(t, v) for t, v in chunk.items() if t not in seen]
                if batch:
                    others = r.hmget(other, [t for t, _ in batch])
                    for (tid, value), paired in zip(batch, others, strict=True):
                        seen.add(tid)
                        yield merge(tid, job, value, paired) if mine_first else merge(tid, job, paired, value)
                        if left is not None:
                            left -= 1
                            if left <= 0:
                                return
                if cursor == 0:
                    break


def dropped_events(gcs: GcsClient, jobs: Iterable[str]) -> dict[str, int]:
    """Of ``jobs``, those that had task views dropped because their tables were full, and
    how many."""
    by_tag: dict[int, list[str]] = {}
    for job in jobs:
        by_tag.setdefault(spread_tag(job), []).append(job)
    out: dict[str, int] = {}
    for tag, group in by_tag.items():  # one MGET per tag: a tag's keys share a slot
        counts = gcs.shard(tag).mget([gcs.keys.task_events_dropped(job) for job in group])
        out.update((job, int(count)) for job, count in zip(group, counts, strict=True) if count)
    return out
