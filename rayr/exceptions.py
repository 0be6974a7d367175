"""Exceptions with Ray's names, so ``except ray.exceptions.X`` keeps working."""

from __future__ import annotations

from typing import Any


class RayError(Exception):
    """Base of every rayr error."""


class RaySystemError(RayError):
    """rayr itself failed (not the user's code)."""


class RayTaskError(RayError):
    """A task raised an exception; ``get`` re-raises it as this *and* the original class.

    ``str()`` carries the remote traceback. ``cause`` is the original exception when it
    could be pickled, else None (its class name and text survive in the traceback).
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None = None,
        pid: int | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(function_name, traceback_str)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node_id = node_id

    def __str__(self) -> str:
        where = f" (pid={self.pid}, node={self.node_id[:8]})" if self.pid and self.node_id else ""
        return f"{self.function_name}(){where} failed:\n{self.traceback_str}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            RayTaskError,
            (self.function_name, self.traceback_str, self.cause, self.pid, self.node_id),
        )

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of a class deriving from both RayTaskError and the cause."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError):
            return self
        try:
            dual: Any = _dual_class(cause_cls)
            err = dual.__new__(dual)
        except TypeError:  # e.g. a final or C class that cannot be subclassed
            return self
        RayTaskError.__init__(
            err, self.function_name, self.traceback_str, self.cause, self.pid, self.node_id
        )
        err.__dict__.update(getattr(self.cause, "__dict__", {}))
        err.__cause__ = self.cause
        return err


_DUAL_CLASSES: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type:
    dual = _DUAL_CLASSES.get(cause_cls)
    if dual is None:
        name = f"RayTaskError({cause_cls.__name__})"
        dual = type(name, (RayTaskError, cause_cls), {"__module__": __name__})
        _DUAL_CLASSES[cause_cls] = dual
    return dual


class WorkerCrashedError(RayError):
    """The worker running a task died before finishing it, and no retries were left."""


class GetTimeoutError(RayError, TimeoutError):
    """``get`` or ``wait`` ran out of time."""


class ObjectLostError(RayError):
    """Every copy of an object is gone and it cannot be rebuilt."""

    def __init__(self, object_hex: str, detail: str = "") -> None:
        super().__init__(object_hex, detail)
        self.object_hex = object_hex
        self.detail = detail

    @property
    def object_ref_hex(self) -> str:
        """Ray's name for the lost object's id."""
        return self.object_hex

    def __str__(self) -> str:
        return f"Object {self.object_hex} is lost. {self.detail}".strip()


class OwnerDiedError(ObjectLostError):
    """The process that owned an object died, so the object cannot be reached."""


class ObjectFetchTimedOutError(ObjectLostError):
    """An object could not be fetched in time."""


class ReferenceCountingAssertionError(ObjectLostError):
    """An object was freed while still referenced."""


class ObjectStoreFullError(RayError):
    """The node's object store is full and nothing can be spilled or evicted."""


class OutOfMemoryError(RayError):
    """A task was killed because its node ran out of memory."""


class TaskCancelledError(RayError):
    """The task was cancelled. A task (or async actor call) interrupted while running raises
    it as a RayTaskError too, as Ray does; one cancelled before it ran raises it alone."""

    def __init__(self, message: str = "", task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id  # hex of the cancelled task, when known


class RayActorError(RayError):
    """An actor died or cannot be reached; ``actor_id`` (hex) names it when known."""

    def __init__(self, message: str = "", actor_id: str | None = None) -> None:
        super().__init__(message)
        self.error_msg = message
        self.actor_id = actor_id
        self.actor_init_failed = False
        self.preempted = False


class ActorDiedError(RayActorError):
    """The actor is dead."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable."""


class RuntimeEnvSetupError(RayError):
    """A runtime environment could not be set up."""


class NodeDiedError(RayError):
    """A node died."""


class LocalRayletDiedError(RayError):
    """The node a driver is attached to died: its raylet ran the driver's tasks and served
    its objects, so what the driver waits for may never come."""


class PendingCallsLimitExceeded(RayError):
    """Too many calls are queued for an actor."""


__all__ = [
    "ActorDiedError",
    "ActorUnavailableError",
    "GetTimeoutError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "ReferenceCountingAssertionError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "WorkerCrashedError",
]


class ActorExitRequest(BaseException):
    """Raised by :func:`rayr.actor.exit_actor`; a BaseException so ``except Exception`` in the
    actor's code cannot swallow it. The actor's runtime catches it and ends the actor."""
