"""What the dashboard's ``/api/`` endpoints answer: plain dicts built from the GCS tables, the
task events and the nodes' heartbeats (``rayr.util.state`` and the CLI's collectors), read
from Redis only. No HTTP here, so each view is testable on its own.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rayr.cli import memory as memory_cli
from rayr.cli import status as status_cli
from rayr.gcs import logs as node_logs
from rayr.gcs import task_events as tev
from rayr.gcs.client import GcsClient
from rayr.gcs.rows import NodeInfo
from rayr.util.state import api as state

RECENT_FAILED_TASKS = 20
TASK_ROWS = 500  # the task table shows the newest this many that match
TIMELINE_SLICES = 3000  # the task stream draws at most this many tasks (the latest to end)


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


def overview(gcs: GcsClient, tasks: list[TaskRow]) -> dict[str, Any]:
    """The cluster page: nodes, totals, recent failures, counts of actors, jobs and tasks."""
    status = status_cli.collect(gcs)
    failed = sorted((t for t in tasks if t.state == tev.FAILED), key=lambda t: -(t.end_ms or 0))
    return {
        "time": time.time(),
        "nodes": nodes(gcs),
        "total": status["total"],
        "available": status["available"],
        "demands": status["demands"],
        "node_failures": status["failures"],
        "failed_tasks": [t.asdict() for t in failed[:RECENT_FAILED_TASKS]],
        "actors": dict(Counter(a.state for a in state.query(gcs, "actors", limit=None))),
        "jobs": dict(Counter(j.status for j in state.query(gcs, "jobs", limit=None))),
        "tasks": dict(Counter(t.state for t in tasks)),
        "redis": redis_info(gcs),
    }


@dataclass(slots=True)
class TaskRow:
    """What the pages show of one task: ~300 bytes, where a TaskState with its events is
    several KiB (the dashboard holds every task of the cluster for a second at a time)."""

    task_id: str
    job_id: str
    name: str
    func: str
    type: str
    state: str
    attempt: int
    actor_id: str | None
    node_id: str | None
    worker_pid: int | None
    error_type: str | None
    error_message: str | None
    created_ms: float | None
    start_ms: float | None  # when it started running (to the microsecond)
    end_ms: float | None

    def asdict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        end, start = self.end_ms, self.start_ms
        out["duration_ms"] = round(end - start, 3) if end is not None and start is not None else None
        return out


def all_tasks(gcs: GcsClient) -> list[TaskRow]:
    """Every task the task events still hold (what was dropped is counted, not listed), read
    one at a time into compact rows; repeated strings (jobs, names, nodes) are shared."""
    shared: dict[str, str] = {}
    one = lambda text: shared.setdefault(text, text) if text is not None else None  # noqa: E731
    rows = []
    for t in tev.read_tasks(gcs, tev.task_jobs(gcs)):
        running = next((e["created_ms"] for e in t.events if e["state"] == tev.RUNNING), None)
        rows.append(TaskRow(
            t.task_id, one(t.job_id) or "", one(t.name) or "", one(t.func_or_class_name) or "",
            one(t.type) or "", one(t.state) or "", t.attempt_number, t.actor_id, one(t.node_id),
            t.worker_pid, t.error_type, t.error_message, t.creation_time_ms,
            running if running is not None else t.start_time_ms, t.end_time_ms))
    return rows


def task_table(tasks: list[TaskRow], job: str = "", state_: str = "", name: str = "",
               limit: int = TASK_ROWS) -> dict[str, Any]:
    """Counts by state and by function, and the newest ``limit`` tasks that match the filters
    (``name`` matches a substring of the task's or its function's name)."""
    chosen = [t for t in tasks if (not job or t.job_id == job) and (not state_ or t.state == state_)
              and (not name or name in t.name or name in t.func)]
    by_func: dict[str, Counter[str]] = {}
    for t in chosen:
        by_func.setdefault(t.func, Counter())[t.state] += 1
    chosen.sort(key=lambda t: -(t.created_ms or t.start_ms or 0))
    return {
        "total": len(chosen),
        "states": dict(Counter(t.state for t in chosen)),
        "by_function": {f: dict(c) for f, c in sorted(by_func.items())},
        "jobs": sorted({t.job_id for t in tasks}),
        "tasks": [t.asdict() for t in chosen[:limit]],
    }


def timeline(tasks: list[TaskRow], since_ms: float) -> dict[str, Any]:
    """Slices of the tasks that ran since ``since_ms`` (the latest TIMELINE_SLICES), one lane
    per worker, for the live task stream (a task still running ends at ``now``)."""
    now = time.time() * 1000
    ran = [t for t in tasks if t.start_ms is not None and t.worker_pid is not None
           and (t.end_ms if t.end_ms is not None else now) >= since_ms]
    ran.sort(key=lambda t: -(t.end_ms if t.end_ms is not None else now))
    lanes: dict[str, list[dict[str, Any]]] = {}
    for t in ran[:TIMELINE_SLICES]:
        lane = f"{(t.node_id or '')[:8]} pid {t.worker_pid}"
        lanes.setdefault(lane, []).append({"name": t.name or t.func, "state": t.state, "start": t.start_ms,
                                           "end": t.end_ms if t.end_ms is not None else now,
                                           "task_id": t.task_id})
    return {"now": now, "since": since_ms, "lanes": dict(sorted(lanes.items())),
            "left_out": max(0, len(ran) - TIMELINE_SLICES)}


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
