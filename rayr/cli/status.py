"""``rayr status``: the cluster's nodes, resource usage and pending demand, Ray's layout."""

from __future__ import annotations

import json
import time
from typing import Any

from rayr.autoscaler.autoscaler import autoscaler_status, render_autoscaler
from rayr.gcs.client import GcsClient
from rayr.resources import fits, parse_shape

BYTE_RESOURCES = ("memory", "object_store_memory")
RECENT_FAILURES = 20  # the latest node deaths shown


def _bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value}B"


def collect(gcs: GcsClient) -> dict[str, Any]:
    """The status as data (``--format json`` prints exactly this)."""
    nodes = gcs.list_nodes()
    alive = [n for n in nodes if n.alive]
    # a node stopped on purpose (`rayr stop`, the autoscaler) is not a failure
    dead = [n for n in nodes if not n.alive and n.death_reason != "stopped"]
    total: dict[str, float] = {}
    free: dict[str, float] = {}
    for node in alive:
        for name, amount in node.resources_total.items():
            total[name] = total.get(name, 0.0) + float(amount)
        for name, amount in node.resources_available.items():
            free[name] = free.get(name, 0.0) + float(amount)
    demands = []
    shape_streams = gcs.shape_streams()
    lengths = gcs.per_stream([s for streams in shape_streams.values() for s in streams],
                             lambda p, s: p.xlen(s))
    for shape, streams in sorted(shape_streams.items()):
        queued = sum(int(n) for s in streams for n in lengths[s] if not isinstance(n, Exception))
        if queued:
            request = parse_shape(shape)
            feasible = any(fits(n.resources_total, request) for n in alive)
            demands.append({"resources": request, "count": queued, "feasible": feasible})
    for info in gcs.placement_groups():
        if info.get("state") == "PENDING":
            feasible = info.get("infeasible") != "1"
            demands.append({"placement_group": info["pg_id"], "resources": json.loads(info["bundles"]),
                            "strategy": info.get("strategy"), "count": 1, "feasible": feasible})
    from rayr.job_submission import job_rows

    running = [r for r in job_rows(gcs) if r["status"] in ("PENDING", "RUNNING")]
    dashboard = {k.decode(): v.decode() for k, v in gcs.r.hgetall(gcs.keys.dashboard).items()}
    return {
        "time": time.time(),
        "dashboard": {k: dashboard[k] for k in ("url", "metrics_url", "auth") if k in dashboard},
        "jobs": running,
        "active": [{"node_id": n.node_id, "host": n.host, "is_head": n.is_head} for n in alive],
        "failures": [
            {"node_id": n.node_id, "host": n.host, "reason": n.death_reason, "time": n.end_time or 0.0}
            for n in sorted(dead, key=lambda n: -(n.end_time or 0.0))[:RECENT_FAILURES]
        ],
        "total": total,
        "available": free,
        "demands": demands,
        "autoscaler": autoscaler_status(gcs),
    }


def render(data: dict[str, Any]) -> str:
    """Ray's ``ray status`` layout."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["time"]))
    rule = "-" * 63
    lines = [f"======== Cluster status: {stamp} ========", "Node status", rule, "Active:"]
    lines += [f" 1 node_{n['node_id']}{' (head)' if n['is_head'] else ''}" for n in data["active"]]
    if not data["active"]:
        lines.append(" (no active nodes)")
    pending = (data.get("autoscaler") or {}).get("pending", [])
    lines += ["Pending:"] + [f" {p['type']}, launching" for p in pending]
    if not pending:
        lines.append(" (no pending nodes)")
    lines.append("Recent failures:")
    lines += [
        f" node_{n['node_id']} ({n['host']}) at {time.strftime('%H:%M:%S', time.localtime(n['time']))}: "
        f"{n['reason'] or 'died'}"
        for n in data["failures"]
    ]
    if not data["failures"]:
        lines.append(" (no failures)")
    lines += ["", "Resources", rule, "Usage:"]
    for name in sorted(data["total"], key=lambda k: (k.startswith("node:"), k)):
        if name.startswith("node:"):
            continue
        total = data["total"][name]
        used = total - data["available"].get(name, 0.0)
        if name in BYTE_RESOURCES:
            lines.append(f" {_bytes(used)}/{_bytes(total)} {name}")
        else:
            lines.append(f" {used:.1f}/{total:.1f} {name}")
    lines += ["", "Demands:"]
    for demand in data["demands"]:
        note = "" if demand["feasible"] else " (infeasible: no node has these resources)"
        if "placement_group" in demand:
            lines.append(f" {demand['resources']} ({demand['strategy']}): pending placement group{note}")
        else:
            lines.append(f" {demand['resources']}: {demand['count']}+ pending tasks{note}")
    if not data["demands"]:
        lines.append(" (no resource demands)")
    if data.get("autoscaler"):
        lines += render_autoscaler(data["autoscaler"])
    lines += ["", "Jobs:"]
    for job in data.get("jobs", []):
        ids = " ".join(x for x in (job["submission_id"], job["job_id"] and f"job_{job['job_id']}") if x)
        lines.append(f" {ids} {job['status']}: {job['entrypoint']}")
    if not data.get("jobs"):
        lines.append(" (no running jobs)")
    return "\n".join(lines + _render_dashboard(data.get("dashboard") or {}))


def _render_dashboard(dashboard: dict[str, str]) -> list[str]:
    lines = ["", "Dashboard:"]
    if not (dashboard.get("url") or dashboard.get("metrics_url")):
        return [*lines, " (none)"]
    if dashboard.get("url"):
        auth = " (token required)" if dashboard.get("auth") == "token" else ""
        lines.append(f" {dashboard['url']}{auth}")
    return [*lines, f" metrics: {dashboard.get('metrics_url', '')}"]
