"""What the dashboard's ``/api/`` endpoints answer: plain dicts built from the GCS tables, the
task events and the nodes' heartbeats (``rayr.util.state`` and the CLI's collectors), read
from Redis only. No HTTP here, so each view is testable on its own.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rayr.cli import memory as memory_cli
from rayr.cli import status as status_cli
from rayr.gcs import logs as node_logs
from rayr.gcs import task_events as tev
from rayr.gcs.client import GcsClient
from rayr.gcs.rows import NodeInfo
from rayr.util.state import api as state
from rayr.util.state.common import TaskState

RECENT_FAILED_TASKS = 20
TASK_ROWS = 500  # the task table shows the newest this many that match


def _node_row(n: NodeInfo) -> dict[str, Any]:
    used = {k: round(float(v) - float(n.resources_available.get(k, 0.0)), 6)
            for k, v in n.resources_total.items() if not k.startswith("node:")} if n.alive else {}
    return {
        "node_id": n.node_id, "state": str(n.state), "is_head": n.is_head, "host": n.host,
        "hostname": n.hostname, "pid": n.pid, "resources_total": n.resources_total,
        "resources_used": used, "store": n.store_usage, "host_usage": n.host_usage,
        "start_time": n.start_time, "end_time": n.end_time, "death_reason": n.death_reason,
    }


def nodes(gcs: GcsClient) -> list[dict[str, Any]]:
    """Every node the cluster has seen: alive ones first, then the dead, newest first."""
    rows = [_node_row(n) for n in gcs.list_nodes()]
    return sorted(rows, key=lambda r: (r["state"] != "ALIVE", -(r["end_time"] or r["start_time"] or 0)))


def redis_info(gcs: GcsClient) -> dict[str, Any]:
    """The GCS server's memory, load and version."""
    info = gcs.r.info()
    return {
        "version": info.get("redis_version") or info.get("valkey_version"),
        "used_memory": info.get("used_memory", 0),
        "ops_per_sec": info.get("instantaneous_ops_per_sec", 0),
        "commands_processed": info.get("total_commands_processed", 0),
        "connected_clients": info.get("connected_clients", 0),
        "uptime_s": info.get("uptime_in_seconds", 0),
    }


def overview(gcs: GcsClient, tasks: list[TaskState]) -> dict[str, Any]:
    """The cluster page: nodes, totals, recent failures, counts of actors, jobs and tasks."""
    status = status_cli.collect(gcs)
    failed = sorted((t for t in tasks if t.state == tev.FAILED), key=lambda t: -(t.end_time_ms or 0))
    return {
        "time": time.time(),
        "nodes": nodes(gcs),
        "total": status["total"],
        "available": status["available"],
        "demands": status["demands"],
        "node_failures": status["failures"],
        "failed_tasks": [_task_row(t) for t in failed[:RECENT_FAILED_TASKS]],
        "actors": dict(Counter(a.state for a in state.query(gcs, "actors", limit=None))),
        "jobs": dict(Counter(j.status for j in state.query(gcs, "jobs", limit=None))),
        "tasks": dict(Counter(t.state for t in tasks)),
        "redis": redis_info(gcs),
    }


def all_tasks(gcs: GcsClient) -> list[TaskState]:
    """Every task the task events still hold (what was dropped is counted, not listed)."""
    return state.query(gcs, "tasks", limit=None, detail=True, raise_on_missing_output=False)


def _task_row(t: TaskState) -> dict[str, Any]:
    times = {e["state"]: e["created_ms"] for e in t.events}
    start = times.get(tev.RUNNING, t.start_time_ms)
    end = t.end_time_ms
    return {
        "task_id": t.task_id, "job_id": t.job_id, "name": t.name, "func": t.func_or_class_name,
        "type": t.type, "state": t.state, "attempt": t.attempt_number, "actor_id": t.actor_id,
        "node_id": t.node_id, "worker_pid": t.worker_pid, "error_type": t.error_type,
        "error_message": t.error_message, "created_ms": t.creation_time_ms, "start_ms": start,
        "end_ms": end,
        "duration_ms": round(end - start, 3) if end is not None and start is not None else None,
    }


def task_table(tasks: list[TaskState], job: str = "", state_: str = "", name: str = "",
               limit: int = TASK_ROWS) -> dict[str, Any]:
    """Counts by state and by function, and the newest ``limit`` tasks that match the filters
    (``name`` matches a substring of the task's or its function's name)."""
    chosen = [t for t in tasks if (not job or t.job_id == job) and (not state_ or t.state == state_)
              and (not name or name in t.name or name in t.func_or_class_name)]
    by_func: dict[str, Counter[str]] = {}
    for t in chosen:
        by_func.setdefault(t.func_or_class_name, Counter())[t.state] += 1
    chosen.sort(key=lambda t: -(t.creation_time_ms or t.start_time_ms or 0))
    return {
        "total": len(chosen),
        "states": dict(Counter(t.state for t in chosen)),
        "by_function": {f: dict(c) for f, c in sorted(by_func.items())},
        "jobs": sorted({t.job_id for t in tasks}),
        "tasks": [_task_row(t) for t in chosen[:limit]],
    }


def timeline(tasks: list[TaskState], since_ms: float) -> dict[str, Any]:
    """Slices of the tasks that ran since ``since_ms``, one lane per worker, for the live
    task stream (a task still running ends at ``now``)."""
    now = time.time() * 1000
    lanes: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        row = _task_row(t)
        start = row["start_ms"]
        if start is None or row["worker_pid"] is None:
            continue
        end = row["end_ms"] if row["end_ms"] is not None else now
        if end < since_ms:
            continue
        lane = f"{(t.node_id or '')[:8]} pid {t.worker_pid}"
        lanes.setdefault(lane, []).append({"name": t.name or t.func_or_class_name, "state": t.state,
                                           "start": start, "end": end, "task_id": t.task_id})
    return {"now": now, "since": since_ms, "lanes": dict(sorted(lanes.items()))}


def jobs(gcs: GcsClient) -> list[dict[str, Any]]:
    """Drivers and submitted jobs, newest first."""
    rows = [j.asdict() for j in state.query(gcs, "jobs", limit=None)]
    return sorted(rows, key=lambda r: -(r["start_time"] or 0))


def job_logs(gcs: GcsClient, submission_id: str, after: str = "0") -> dict[str, Any]:
    """A submitted job's output after stream entry ``after`` (``"0"``: from the start)."""
    entries = gcs.r.xrange(gcs.keys.submission_logs(submission_id), min=f"({after}" if after != "0" else "-",
                           count=2000)
    text = "".join(fields[b"d"].decode(errors="replace") for _, fields in entries)
    last = entries[-1][0].decode() if entries else after
    return {"text": text, "next": last}


def actors(gcs: GcsClient) -> list[dict[str, Any]]:
    """Every actor, alive ones first."""
    rows = [a.asdict() for a in state.query(gcs, "actors", limit=None)]
    order = {"ALIVE": 0, "PENDING": 1, "RESTARTING": 2, "DEAD": 3}
    return sorted(rows, key=lambda r: (order.get(r["state"], 4), r["class_name"], r["actor_id"]))


def objects(gcs: GcsClient) -> dict[str, Any]:
    """Store use per node and the largest objects (``rayr memory``'s data)."""
    return memory_cli.collect(gcs, limit=100)


def placement_groups(gcs: GcsClient) -> list[dict[str, Any]]:
    return [p.asdict() for p in state.query(gcs, "placement-groups", limit=None)]


def log_files(gcs: GcsClient, node_id: str) -> list[dict[str, Any]]:
    """A live node's log files (its raylet answers through Redis)."""
    return node_logs.list_logs(gcs, node_id)


def read_log(gcs: GcsClient, node_id: str, name: str, offset: int) -> dict[str, Any]:
    """Bytes of a node's log from ``offset`` (negative: the last that many), and the offset
    after them, so a page can follow the file."""
    data, after = node_logs.read_log(gcs, node_id, name, offset, limit=256 * 1024)
    return {"text": data.decode(errors="replace"), "next": after}
