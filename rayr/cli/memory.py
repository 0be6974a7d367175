"""``rayr memory``: what the cluster's object stores hold, per node and per object."""

from __future__ import annotations

import json
from typing import Any

from rayr.cli.status import _bytes
from rayr.gcs import records as rec
from rayr.gcs.client import GcsClient

KINDS = {rec.VALUE: "inline", rec.ERROR: "error", rec.STORED: "store"}


def collect(gcs: GcsClient, limit: int = 50) -> dict[str, Any]:
    """Per-node store usage and the largest objects in the object table."""
    nodes = []
    for node in gcs.alive_nodes():
        usage = node.store_usage
        nodes.append({
            "node_id": node.node_id,
            "backend": node.store_backend,
            "capacity": usage.get("capacity"),
            "used_bytes": usage.get("used_bytes", 0),
            "objects": usage.get("num_objects", 0),
            "spilled_bytes": usage.get("spilled_bytes", 0),
            "spilled_objects": usage.get("spilled_objects", 0),
        })
    objects: list[dict[str, Any]] = []
    for batch in gcs.object_records(batch=1000):
        for object_hex, record in batch:
            kind = KINDS.get(record[0], "?")
            holder, size = rec.parse_stored(record) if kind == "store" else ("", len(record) - 1)
            objects.append({"object_id": object_hex, "job": object_hex[:8], "kind": kind,
                            "node": holder, "size": size})
    objects.sort(key=lambda o: -o["size"])
    shown = objects[:limit]
    holders = gcs.object_holders([obj["object_id"] for obj in shown])
    for obj, members in zip(shown, holders, strict=True):
        captured = sorted(m.decode()[2:] for m in members if m.startswith(b"o:"))
        obj["refs"] = {"borrowers": len(members) - len(captured), "captured_in": captured}
    return {"nodes": nodes, "total_objects": len(objects), "objects": shown}


def _refs(obj: dict[str, Any]) -> str:
    """How the object is referenced besides its owner's own refs (local)."""
    refs = obj.get("refs") or {}
    kinds = ["local"]
    if refs.get("borrowers"):
        kinds.append(f"borrowed x{refs['borrowers']}")
    if refs.get("captured_in"):
        kinds.append(f"captured in {len(refs['captured_in'])} object(s)")
    return ", ".join(kinds)


def render(data: dict[str, Any]) -> str:
    lines = ["======== Object store memory ========", "Nodes", "-" * 63]
    for node in data["nodes"]:
        cap = _bytes(node["capacity"]) if node["capacity"] else "unlimited"
        lines.append(
            f" node_{node['node_id'][:12]} ({node['backend']}): {_bytes(node['used_bytes'])}/{cap} "
            f"in {node['objects']} objects, {_bytes(node['spilled_bytes'])} spilled "
            f"({node['spilled_objects']} objects)"
        )
    if not data["nodes"]:
        lines.append(" (no live nodes)")
    lines += ["", f"Objects ({data['total_objects']} in the object table, largest first)", "-" * 63]
    for obj in data["objects"]:
        where = f"node_{obj['node'][:12]}" if obj["node"] else "Redis"
        size = _bytes(obj["size"])
        lines.append(f" {obj['object_id']}  {size:>10}  {obj['kind']:<6} {where}  job {obj['job']}  "
                     f"refs: {_refs(obj)}")
    if not data["objects"]:
        lines.append(" (none)")
    return "\n".join(lines)


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)

