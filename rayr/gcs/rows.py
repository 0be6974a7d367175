"""Typed rows of the GCS tables, read from their Redis hashes.

Rows are built from a hash once (``from_hash``) and carry the rules that read them, so a rule
such as "may this actor restart?" is written once, not at each place that decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ActorState(StrEnum):
    """An actor's lifecycle, Ray's names."""

    PENDING = "PENDING"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


@dataclass(frozen=True)
class ActorInfo:
    """One actor's row (``actor:<id>``): the fields the restart decisions read."""

    actor_id: str
    state: ActorState
    class_name: str
    node: str  # the node it lives on; "" while placed or restarting
    restarts: int
    max_restarts: int  # -1: restart forever
    creation_spec: bytes | None  # the encoded creation task, once it has been alive

    @classmethod
    def from_hash(cls, actor_id: str, row: dict[str, Any]) -> ActorInfo:
        """The row ``GcsClient.actor_info`` returns (values decoded but the spec)."""
        return cls(
            actor_id=actor_id,
            state=ActorState(row.get("state", ActorState.DEAD)),
            class_name=str(row.get("class_name", "")),
            node=str(row.get("node", "")),
            restarts=int(row.get("restarts", 0)),
            max_restarts=int(row.get("max_restarts", 0)),
            creation_spec=row.get("creation_spec") or None,
        )

    def may_restart(self) -> bool:
        """Whether one more restart is within ``max_restarts``."""
        return self.max_restarts == -1 or self.restarts < self.max_restarts


class NodeState(StrEnum):
    """A node's lifecycle: alive from registration, dead once declared so (never alive again;
    a resumed raylet rejoins as a new node)."""

    ALIVE = "ALIVE"
    DEAD = "DEAD"


def _json_dict(raw: dict[str, str], field: str) -> dict[str, Any]:
    return dict(json.loads(raw.get(field) or "{}"))


@dataclass(frozen=True)
class NodeInfo:
    """One node's row (``node:<id>``), as its raylet registered it and its heartbeats keep it."""

    node_id: str
    state: NodeState = NodeState.ALIVE
    host: str = ""  # the address other nodes reach it at
    hostname: str = ""
    pid: int = 0  # the raylet's
    is_head: bool = False
    resources_total: dict[str, float] = field(default_factory=dict)
    resources_available: dict[str, float] = field(default_factory=dict)  # as of its last heartbeat
    store_backend: str = ""
    store_namespace: str = ""
    store_options: dict[str, Any] = field(default_factory=dict)
    store_usage: dict[str, Any] = field(default_factory=dict)  # as of its last heartbeat
    # the host's CPU and memory use (cpu_percent, mem_total, mem_used), as of its last heartbeat
    host_usage: dict[str, Any] = field(default_factory=dict)
    session_dir: str = ""
    start_time: float = 0.0
    end_time: float | None = None  # when it was declared dead
    death_reason: str = ""

    @property
    def alive(self) -> bool:
        return self.state == NodeState.ALIVE

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> NodeInfo:
        """The row from the hash ``HGETALL node:<id>`` returns."""
        row = {k.decode(): v.decode() for k, v in raw.items()}
        end = row.get("end_time")
        return cls(
            node_id=row["node_id"],
            state=NodeState(row.get("state", NodeState.DEAD)),
            host=row.get("host", ""),
            hostname=row.get("hostname", ""),
            pid=int(row.get("pid") or 0),
            is_head=row.get("is_head") == "1",
            resources_total=_json_dict(row, "resources_total"),
            resources_available=_json_dict(row, "resources_available"),
            store_backend=row.get("store_backend", ""),
            store_namespace=row.get("store_namespace", ""),
            store_options=_json_dict(row, "store_options"),
            store_usage=_json_dict(row, "store_usage"),
            host_usage=_json_dict(row, "host_usage"),
            session_dir=row.get("session_dir", ""),
            start_time=float(row.get("start_time") or 0.0),
            end_time=float(end) if end else None,
            death_reason=row.get("death_reason", ""),
        )

    def to_hash(self) -> dict[str, str]:
        """The hash a raylet registers (the inverse of ``from_hash``)."""
        row: dict[str, str] = {
            "node_id": self.node_id, "state": str(self.state), "host": self.host,
            "hostname": self.hostname, "pid": str(self.pid), "is_head": str(int(self.is_head)),
            "store_backend": self.store_backend, "store_namespace": self.store_namespace,
            "session_dir": self.session_dir, "start_time": repr(self.start_time),
            "death_reason": self.death_reason,
        }
        for name in ("resources_total", "resources_available", "store_options", "store_usage", "host_usage"):
            row[name] = json.dumps(getattr(self, name))
        if self.end_time is not None:
            row["end_time"] = repr(self.end_time)
        return row
