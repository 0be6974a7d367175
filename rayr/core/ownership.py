"""What a process knows about the objects it owns or holds: records, reference counts,
borrowings and what is due to be freed.

``OwnershipTable`` does no I/O, takes no lock and starts no thread: the core worker calls
it under its one lock and does the Redis and store work its answers call for. That keeps
the subtlest state of the runtime testable without a cluster (tests/unit/test_ownership.py).

An object moves through these sets::

    own_returns / own_put ─▶ pending (owned, no record yet) ─▶ records (owned, resolved)
    accept() of a record nobody counts any more ─▶ to_delete
    last local ref dropped ─▶ to_delete (or freed_pending, until its record arrives)
    shared (pickled into a task or object) ─▶ freed in Redis once no holder is left
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayr.gcs import records as rec

FLUSH_AT = 256  # queued frees sent at once when this many are due


@dataclass
class Frees:
    """What freeing a batch takes, as ``OwnershipTable.take_frees`` hands it out."""

    delete_local: list[bytes] = field(default_factory=list)  # stored here: drop from this node's store
    delete_records: list[bytes] = field(default_factory=list)  # plain objects: drop their records
    # shared or containing refs: freed in Redis (FREE_OBJECTS) once no holder is left;
    # the flag is True for a container nobody else holds (freed at once)
    held: list[tuple[bytes, bool]] = field(default_factory=list)
    releases: list[tuple[bytes, str, str]] = field(default_factory=list)  # borrowings dropped

    def __bool__(self) -> bool:
        return bool(self.delete_local or self.delete_records or self.held or self.releases)


class OwnershipTable:
    """Objects this process owns or holds refs to. Not thread-safe: call under the core's lock
    (except ``release``, which ``ObjectRef.__del__`` calls from anywhere)."""

    def __init__(self, worker_hex: str) -> None:
        self.worker_hex = worker_hex
        self.records: dict[bytes, bytes] = {}  # resolved objects this process holds refs to
        self.arrivals = 0  # records filed from the inbox so far: a waiter sees whether any came
        self.pending: set[bytes] = set()  # owned, result not arrived yet
        self.owned: set[bytes] = set()  # owned and not freed
        self.shared: set[bytes] = set()  # owned and pickled: freed once no holder is left (in Redis)
        self.containers: set[bytes] = set()  # owned objects that hold refs: freed with FREE_OBJECTS
        self.borrowed: dict[bytes, str] = {}  # refs unpickled here that others own -> owner
        self.releases: list[tuple[bytes, str, str]] = []  # borrowings to drop: (id, us, owner)
        self.freed_pending: set[bytes] = set()  # freed before its result arrived
        self.watching: set[bytes] = set()  # borrowed; our inbox is registered as waiter
        self.refs: dict[bytes, int] = {}  # live ObjectRef instances per id in this process
        self.released: deque[bytes] = deque()  # ids whose ObjectRef died; counted down later
        self.to_delete: list[tuple[bytes, bytes | None]] = []
        self.streams: set[bytes] = set()  # generator tasks whose items we accept as they come
        # futures of ObjectRefs (await ref): resolved when the record arrives; the ref rides
        # along so the record is kept until then
        self.futures: dict[bytes, list[tuple[Any, concurrent.futures.Future]]] = {}

    # ------------------------------------------------------------ references
    def add_ref(self, oid: bytes) -> None:
        self.refs[oid] = self.refs.get(oid, 0) + 1

    def release(self, oid: bytes) -> None:
        """An ObjectRef died. Called from ``__del__``, possibly inside a locked section of
        this very thread: only noted here, counted down by ``drain_released``."""
        self.released.append(oid)

    def drain_released(self) -> tuple[list[bytes], bool]:
        """Count down the refs that died. Returns (owned objects now freed, whether the frees
        should go out at once: a stored object's memory is worth having back now)."""
        freed: list[bytes] = []
        stored_freed = False
        while self.released:
            oid = self.released.popleft()
            left = self.refs.get(oid, 0) - 1
            if left > 0:
                self.refs[oid] = left
                continue
            self.refs.pop(oid, None)
            record = self.records.pop(oid, None)
            owner = self.borrowed.pop(oid, None)
            if owner is not None:
                self.releases.append((oid, self.worker_hex, owner))
            if oid not in self.owned:
                continue
            self.owned.discard(oid)
            freed.append(oid)
            if oid in self.pending:
                self.pending.discard(oid)
                self.freed_pending.add(oid)
            else:
                self.to_delete.append((oid, record))
                stored_freed = stored_freed or bool(record and record[0] == rec.STORED)
        return freed, stored_freed or len(self.to_delete) >= FLUSH_AT or bool(self.releases)

    def borrow(self, oid: bytes, owner: str) -> bool:
        """A ref another process owns was unpickled here; True the first time (register as
        its borrower then)."""
        if not owner or owner == self.worker_hex or oid in self.borrowed:
            return False
        self.borrowed[oid] = owner
        return True

    def mark_shared(self, oid: bytes) -> None:
        if oid in self.owned:
            self.shared.add(oid)

    def add_container(self, oid: bytes) -> None:
        """``oid`` (ours) holds refs: it must be freed in Redis, releasing what it holds."""
        self.containers.add(oid)

    def on_holders_gone(self, oid: bytes) -> None:
        """The last borrower or container of a shared object let go (message F)."""
        if oid in self.shared and self.refs.get(oid, 0) == 0 and oid not in self.owned:
            self.to_delete.append((oid, None))

    def take_frees(self) -> Frees:
        """Everything due to be freed, taken out of the table."""
        batch, self.to_delete = self.to_delete, []
        frees = Frees(releases=self.releases)
        self.releases = []
        for oid, record in batch:
            shared = oid in self.shared
            if not shared and record and record[0] == rec.STORED:
                frees.delete_local.append(oid)  # a container too: only this process has it
            if shared or oid in self.containers:
                frees.held.append((oid, not shared))
                self.containers.discard(oid)
            else:
                frees.delete_records.append(oid)
        return frees

    def freed_in_redis(self, held: list[tuple[bytes, bool]], flags: list[Any]) -> list[bytes]:
        """FREE_OBJECTS answered: the shared objects it freed (drop them from the store)."""
        gone = []
        for (oid, _), freed in zip(held, flags, strict=True):
            if freed and oid in self.shared:
                self.shared.discard(oid)
                gone.append(oid)
        return gone

    # --------------------------------------------------------------- records
    def own_returns(self, return_ids: list[bytes], stream_task: bytes | None = None) -> None:
        """A task was submitted: its returns are ours, pending. A generator task's items are
        accepted as they come (``stream_task``: its id), before any ref to them exists."""
        self.pending.update(return_ids)
        self.owned.update(return_ids)
        if stream_task is not None:
            self.streams.add(stream_task)

    def own_put(self, oid: bytes, record: bytes) -> None:
        self.records[oid] = record
        self.owned.add(oid)

    def accept(self, oid: bytes, record: bytes) -> list[tuple[concurrent.futures.Future, bytes]] | None:
        """File one arrived record; returns the futures it resolves (None: none)."""
        self.arrivals += 1
        self.watching.discard(oid)
        if oid in self.pending:
            self.pending.discard(oid)
            self.records[oid] = record
        elif oid in self.refs:
            # the first record wins: a call failed by an actor's death may still finish
            self.records.setdefault(oid, record)
        elif oid in self.freed_pending:
            self.freed_pending.discard(oid)
            self.to_delete.append((oid, record))
        elif oid[:16] in self.streams:  # a generator's item: ours before any ref exists
            self.records.setdefault(oid, record)
            self.owned.add(oid)
        if oid in self.futures and oid in self.records:
            kept = self.records[oid]
            return [(fut, kept) for _, fut in self.futures.pop(oid)]
        return None

    def fail_put(self, oid: bytes, record: bytes) -> None:
        """A put's record could not be stored: what it reads becomes ``record`` (an error)."""
        if oid in self.records:
            self.records[oid] = record

    def to_watch(self, oids: set[bytes] | list[bytes]) -> list[bytes]:
        """Of ``oids``, those neither known nor announced to us yet (now marked as watched)."""
        need = [
            o for o in oids
            if o not in self.records and o not in self.pending and o not in self.watching
            and o[:16] not in self.streams
        ]
        self.watching.update(need)
        return need

    def watched(self, oids: list[bytes], found: list[bytes | None]) -> None:
        """Records the object table already held for ``oids`` (None: announced later)."""
        for oid, record in zip(oids, found, strict=True):
            if record is not None:
                self.watching.discard(oid)
                if oid in self.refs:
                    self.records[oid] = record

    def await_record(self, oid: bytes, ref: Any, fut: concurrent.futures.Future) -> bytes | None:
        """The record of ``oid`` if known, else ``fut`` is resolved when it arrives."""
        record = self.records.get(oid)
        if record is None:
            self.futures.setdefault(oid, []).append((ref, fut))
        return record

    def forget_stream(self, task_id: bytes, first_unread: int) -> None:
        """The generator is gone: free items nobody took, stop accepting new ones."""
        self.streams.discard(task_id)
        unread = [
            o for o in self.records
            if o[:16] == task_id and int.from_bytes(o[16:], "big") >= first_unread
        ]
        for oid in unread:
            if oid not in self.refs:
                record = self.records.pop(oid)
                self.owned.discard(oid)
                self.to_delete.append((oid, record))

    def stored_output(self, return_ids: list[bytes]) -> bool:
        """Whether one of these outputs is ours, referenced, and stored in a node's store
        (inline values live in Redis and are never lost)."""
        for rid in return_ids:
            record = self.records.get(rid)
            if rid in self.owned and record is not None and record[0] == rec.STORED:
                return True
        return False

    def prepare_rerun(self, return_ids: list[bytes]) -> list[bytes]:
        """A finished task runs again: its owned outputs go back to pending (returned)."""
        returns = [r for r in return_ids if r in self.owned]
        for rid in returns:
            self.records.pop(rid, None)
            self.pending.add(rid)
        return returns
