"""Messages on a node's control stream (``tasks:node:<id>``): what submitters, the monitor and
other nodes ask of one raylet, which reads them at once however busy the node is.

Each kind is one small class that builds its stream-entry fields (``fields()``); ``parse``
turns an entry back into messages. Only the CANCEL_TASK script writes an entry without this
module (its fields are ``Cancel``'s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Poke:
    """A task stream the node should read was announced: refresh the streams read."""

    def fields(self) -> dict[bytes, bytes]:
        return {b"poke": b"1"}


@dataclass(frozen=True)
class Kill:
    """SIGKILL the process of ``actor`` (hex), if it lives here."""

    actor: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"kill": self.actor.encode()}


@dataclass(frozen=True)
class Cancel:
    """Cancel task ``task_id``: drop it if queued, else interrupt (or with ``force`` kill) the
    worker running it; ``consumer`` took its stream entry (the node or a leased worker)."""

    task_id: bytes
    flags: str = ""  # comma-separated: force, recursive
    consumer: str = ""

    def fields(self) -> dict[bytes, bytes]:
        return {b"cancel": self.task_id.hex().encode(), b"flags": self.flags.encode(),
                b"consumer": self.consumer.encode()}


@dataclass(frozen=True)
class Pull:
    """Send object ``object_id`` (``size`` bytes, in this node's store) to node ``dest``."""

    object_id: bytes
    dest: str
    size: int

    def fields(self) -> dict[bytes, bytes]:
        return {b"pull": self.object_id.hex().encode(), b"dest": self.dest.encode(),
                b"size": str(self.size).encode()}


@dataclass(frozen=True)
class ReserveBundles:
    """Set placement group ``pg``'s ``bundles`` (index, resources) aside; answer ``ok:<node>``
    or ``fail:<node>`` on the list ``reply``."""

    pg: str
    bundles: list[tuple[int, dict[str, float]]]
    reply: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"pg_reserve": json.dumps({"pg": self.pg, "bundles": self.bundles}).encode(),
                b"reply": self.reply.encode()}


@dataclass(frozen=True)
class ReleaseBundles:
    """Give back what placement group ``pg`` reserved here (nothing if it reserved nothing)."""

    pg: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"pg_release": self.pg.encode()}


@dataclass(frozen=True)
class JobDone:
    """Job ``job`` (hex) ended: free its objects here and drop its queued tasks."""

    job: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"jobdone": self.job.encode()}


@dataclass(frozen=True)
class PrepareEnv:
    """Set up runtime env ``digest`` now, before its first task arrives."""

    digest: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"env_prepare": self.digest.encode()}


@dataclass(frozen=True)
class ListLogs:
    """Answer on the list ``reply`` with this node's log files (JSON: name, size, mtime, and the
    worker pid where known)."""

    reply: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"log_list": self.reply.encode()}


@dataclass(frozen=True)
class ReadLog:
    """Answer on ``reply`` with up to ``limit`` bytes of log file ``name`` from ``offset``
    (negative: that many bytes before its end)."""

    name: str
    offset: int
    limit: int
    reply: str

    def fields(self) -> dict[bytes, bytes]:
        return {b"log_read": self.name.encode(), b"offset": str(self.offset).encode(),
                b"limit": str(self.limit).encode(), b"reply": self.reply.encode()}


Message = (Poke | Kill | Cancel | Pull | ReserveBundles | ReleaseBundles | JobDone | PrepareEnv
           | ListLogs | ReadLog)


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    return fields.get(name, b"").decode()


def _reserve(fields: dict[bytes, bytes]) -> ReserveBundles:
    request: dict[str, Any] = json.loads(fields[b"pg_reserve"])
    bundles = [(int(i), dict(b)) for i, b in request["bundles"]]
    return ReserveBundles(request["pg"], bundles, _text(fields, b"reply"))


# the field that names each kind, and how to read the entry as that kind
_PARSERS: dict[bytes, Any] = {
    b"poke": lambda f: Poke(),
    b"kill": lambda f: Kill(_text(f, b"kill")),
    b"cancel": lambda f: Cancel(bytes.fromhex(_text(f, b"cancel")), _text(f, b"flags"),
                                _text(f, b"consumer")),
    b"pull": lambda f: Pull(bytes.fromhex(_text(f, b"pull")), _text(f, b"dest"), int(f[b"size"])),
    b"pg_reserve": _reserve,
    b"pg_release": lambda f: ReleaseBundles(_text(f, b"pg_release")),
    b"jobdone": lambda f: JobDone(_text(f, b"jobdone")),
    b"env_prepare": lambda f: PrepareEnv(_text(f, b"env_prepare")),
    b"log_list": lambda f: ListLogs(_text(f, b"log_list")),
    b"log_read": lambda f: ReadLog(_text(f, b"log_read"), int(f[b"offset"]), int(f[b"limit"]),
                                   _text(f, b"reply")),
}


def parse(fields: dict[bytes, bytes]) -> list[Message]:
    """The messages a control-stream entry carries (one, from every sender here)."""
    return [parser(fields) for name, parser in _PARSERS.items() if name in fields]
