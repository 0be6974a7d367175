"""Typed rows of the GCS tables, read from their Redis hashes.

Rows are built from a hash once (``from_hash``) and carry the rules that read them, so a rule
such as "may this actor restart?" is written once, not at each place that decides.
"""

from __future__ import annotations

from dataclasses import dataclass
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
