"""The records ``rayr.util.state`` returns, with Ray's field names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rayr.exceptions import RayError
from rayr.gcs.task_events import TaskRecord

DEFAULT_LIMIT = 100  # as Ray's state API


class RayStateApiException(RayError):
    """A state query could not be answered completely (or at all)."""


class _Record:
    """What every state record offers besides its fields."""

    def asdict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]


@dataclass
class TaskState(TaskRecord, _Record):
    """A task or actor call: its latest state and the transitions seen (``events``)."""


@dataclass
class ActorState(_Record):
    actor_id: str
    class_name: str
    state: str  # PENDING (also while being placed), ALIVE, RESTARTING, DEAD
    job_id: str
    name: str
    ray_namespace: str
    node_id: str | None
    pid: int | None
    num_restarts: int
    max_restarts: int
    is_detached: bool
    death_cause: str | None = None
    repr_name: str = ""


@dataclass
class NodeState(_Record):
    node_id: str
    node_ip: str
    is_head_node: bool
    state: str  # ALIVE or DEAD
    node_name: str
    resources_total: dict[str, float]
    resources_available: dict[str, float]
    start_time_ms: int | None
    end_time_ms: int | None
    state_message: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class JobState(_Record):
    job_id: str | None
    submission_id: str | None
    status: str
    entrypoint: str
    type: str  # SUBMISSION (through `rayr job submit`) or DRIVER
    start_time: int | None  # ms
    end_time: int | None = None


@dataclass
class PlacementGroupState(_Record):
    placement_group_id: str
    name: str
    creator_job_id: str
    state: str  # PENDING, CREATED, REMOVED
    strategy: str
    is_detached: bool
    bundles: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ObjectState(_Record):
    object_id: str
    object_size: int
    job_id: str
    # where its value lives: INLINE (in Redis), OBJECT_STORE (a node's store) or ERROR
    storage: str
    node_id: str | None  # the store holding it
    # LOCAL_REFERENCE: only its owner's refs; BORROWED: other processes hold refs too;
    # CAPTURED_IN_OBJECT: other objects contain it
    reference_type: str
    num_borrowers: int = 0
    captured_in: list[str] = field(default_factory=list)
    task_status: str | None = None


@dataclass
class WorkerState(_Record):
    worker_id: str
    worker_type: str  # WORKER or DRIVER
    is_alive: bool
    node_id: str | None
    pid: int | None
    ip: str | None = None
    actor_id: str | None = None
    job_id: str | None = None
