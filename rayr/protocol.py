"""Messages between a raylet and its workers, over the socket pair the raylet gives each one.

Each message is a small typed record; on the wire it stays a plain tuple ``(kind, *fields)``
(pickled by ``multiprocessing.connection``), built by ``encode`` and read back by ``decode``.
It lives in the common layer because both ends use it: the raylet (a daemon) and the worker
(core), which never import each other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# ----------------------------------------------------------- raylet -> worker


class RunTasks(NamedTuple):
    """Run these stream entries; with ``lease``, keep taking the last one's stream after."""

    items: list[tuple[str, bytes, bytes]]  # (stream, entry id, encoded spec)
    lease: bool


class BecomeActor(NamedTuple):
    """Construct the actor of this creation entry and serve it for the rest of the process."""

    stream: str
    entry_id: bytes
    spec: bytes
    restart: bool


class Exit(NamedTuple):
    """Idle and not needed: end."""



# ----------------------------------------------------------- worker -> raylet


class Ready(NamedTuple):
    """Started and connected: give me work."""

    pid: int


class Done(NamedTuple):
    """The tasks of the last RunTasks (and of its lease) finished: ``ran`` in all."""

    ran: int


class Blocked(NamedTuple):
    """The running task waits in get/wait (its CPU is lent out) or stopped waiting."""

    blocked: bool


class ActorReady(NamedTuple):
    """The actor's constructor returned: it serves calls now."""

    actor_id: str


class ActorFailed(NamedTuple):
    """The actor will not serve (killed before it started, or its constructor raised)."""



Message = RunTasks | BecomeActor | Exit | Ready | Done | Blocked | ActorReady | ActorFailed
# the tag each kind carries on the wire
KIND: dict[type, str] = {
    RunTasks: "tasks", BecomeActor: "actor", Exit: "exit", Ready: "ready", Done: "done",
    Blocked: "blocked", ActorReady: "actor_ready", ActorFailed: "actor_failed",
}
_BY_KIND: dict[str, Any] = {kind: cls for cls, kind in KIND.items()}


def encode(msg: Message) -> tuple[Any, ...]:
    """The tuple that goes on the wire."""
    return (KIND[type(msg)], *msg)


def decode(raw: tuple[Any, ...]) -> Message:
    """The message a wire tuple carries.

    Raises:
        ValueError: an unknown kind or the wrong number of fields.
    """
    cls = _BY_KIND.get(raw[0]) if raw else None
    if cls is None:
        raise ValueError(f"unknown raylet/worker message {raw!r}; known kinds: {sorted(_BY_KIND)}")
    try:
        return cls(*raw[1:])
    except TypeError as err:
        raise ValueError(f"malformed {raw[0]!r} message {raw!r}: {err}") from None
