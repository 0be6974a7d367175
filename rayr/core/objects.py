"""Objects in and out of a process: put, get, wait, reading a stored object (pulling it from
another node first if need be), and rebuilding a lost one.

A borrower that finds an object lost asks its owner to rebuild it (inbox messages R and A,
see gcs/records.py); the owner re-runs the task that made it from its lineage.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rayr import serialization
from rayr.core.lineage import LineageTable
from rayr.core.ownership import OwnershipTable
from rayr.core.submitter import PUT_INDEX, TaskSubmitter, check_inline_size
from rayr.exceptions import (
    GetTimeoutError,
    LocalRayletDiedError,
    ObjectLostError,
    OwnerDiedError,
    RaySystemError,
    RayTaskError,
)
from rayr.gcs import records as rec
from rayr.gcs import spread
from rayr.gcs.client import GcsClient
from rayr.gcs.command_stream import BURST_GAP_S, BURST_MAX, CommandStream
from rayr.keys import spread_tag
from rayr.object_ref import ObjectRef
from rayr.object_store import transfer
from rayr.object_store.base import ObjectStoreBackend

if TYPE_CHECKING:
    from rayr.config import Settings

OWNER_ANSWER_S = 5.0  # an owner that does not acknowledge a rebuild request in time is dead
REDIS_CHECK_S = 1.0  # a blocked get/wait looks this often whether Redis has been away too long
FREES_EVERY_S = 0.05  # records of freed small objects are deleted in batches at most this often


class ObjectClient:
    """put/get/wait for one process, over its ``OwnershipTable`` (read and changed under
    ``cond``, never held across Redis or the store)."""

    def __init__(
        self,
        *,
        gcs: GcsClient,
        commands: CommandStream,
        settings: Settings,
        store: ObjectStoreBackend,
        node_hex: str,
        worker_hex: str,
        cond: threading.Condition,
        ownership: OwnershipTable,
        lineage: LineageTable,
        submitter: TaskSubmitter,
        redis_down_since: Callable[[], float | None],
        on_blocked: Callable[[bool], None] | None = None,
        read_inbox: Callable[[float, Callable[[], bool], bool], bool] | None = None,
    ) -> None:
        self.gcs = gcs
        self.keys = gcs.keys
        self.commands = commands
        self.settings = settings
        self.store = store
        self.node_hex = node_hex
        self.worker_hex = worker_hex
        self.cond = cond
        self.own = ownership
        self.lineage = lineage
        self.submitter = submitter
        self._redis_down_since = redis_down_since
        self._on_blocked = on_blocked
        # reads the inbox on the waiting thread (InboxReader.read_here); False: wait instead
        self._read_inbox = read_inbox
        self._waiters = 0  # threads in wait_ready's wait loop (under cond)
        self.node_died: str | None = None  # why this process's node died, once it has
        self._threshold = settings.inline_threshold
        self.rebuild_acks: set[bytes] = set()  # objects whose owner acknowledged our request
        self._frees_due = 0.0  # flush_deletes(due_only=True) sends nothing before (monotonic)
        # (object id, record) of small puts held back in a burst, in order (flush_puts)
        self._held_puts: list[tuple[bytes, bytes]] = []
        self._held_puts_lock = threading.Lock()
        self._held_puts_send_lock = threading.Lock()  # flush_puts: take and send in one hold
        self._last_put = 0.0  # when the last put was made (perf_counter)
        commands.before_push(self.flush_puts)

    # -------------------------------------------------------------- writing
    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` as a new object owned by this process."""
        self.drain_released()
        try:
            frame = serialization.serialize(value)
        except Exception as err:
            raise TypeError(f"put(): could not serialize {type(value).__name__}: {err}") from err
        # the job of the task running here (a worker runs tasks of several jobs)
        oid = self.submitter.job_id.binary() + self.submitter.unique_suffix() + PUT_INDEX
        record = self.make_record(oid, frame)
        # written on the command stream: any task that later receives the ref is queued
        # on the same connection, after it, so it always finds the record (on a Redis Cluster
        # the record goes to its own master's stream: a task there first waits for it)
        with self.cond:
            self.own.own_put(oid, record)
        now = time.perf_counter()
        burst, self._last_put = now - self._last_put < BURST_GAP_S, now
        if burst and record[0] != rec.STORED:
            # a burst of small puts (a put+get loop): stored by one script call at the next
            # push (flush_puts). A task given the ref carries the record inline; anyone else
            # who asks for it meanwhile is told when it is stored, as for any object
            with self._held_puts_lock:
                self._held_puts.append((oid, record))
                full = len(self._held_puts) >= BURST_MAX
            if full:
                self.flush_puts()
            else:
                self.commands.wake_flusher()
        else:
            self._store_puts([(oid, record)])
        return ObjectRef(oid, self.worker_hex)

    def flush_puts(self) -> None:
        """Store the small puts held back in a burst (a ``CommandStream.before_push`` hook; also
        before any free, whose delete must come after its record's write)."""
        # the batch is taken and sent under one lock: a free waits here for a batch another
        # thread (the flusher) took and has not yet sent, or its DEL could go first
        with self._held_puts_send_lock:
            with self._held_puts_lock:
                batch, self._held_puts = self._held_puts, []
            if batch:
                self._store_puts(batch, held=True)

    def _store_puts(self, puts: list[tuple[bytes, bytes]], held: bool = False) -> None:
        # one script call per spread tag (one, off a Redis Cluster), each told its own failure
        for _tag, group in self.gcs.by_object_tag(puts, lambda put: put[0].hex()):
            on_reply = self._on_put_reply([oid for oid, _ in group])
            try:
                spread.send(self.commands, self.gcs,
                            self.gcs.store_objects_commands([(oid, record, "") for oid, record in group]),
                            on_reply)
            except Exception as err:  # the connection is lost for good
                if not held:
                    raise  # a put sent at once: its caller hears it
                on_reply([err])  # held ones (maybe on the flusher thread): they fail, not hang

    def _on_put_reply(self, oids: list[bytes]) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            if isinstance(replies[0], Exception):  # not stored: a get must say so, not hang
                with self.cond:
                    for oid in oids:
                        error = RaySystemError(f"put() of {oid.hex()} failed in Redis: {replies[0]}")
                        self.own.fail_put(oid, rec.error_record(serialization.dumps(error)))
        return on_reply

    def make_record(self, oid: bytes, frame: serialization.SerializedObject, owner: str = "") -> bytes:
        """An object-table record for ``frame``: inline when small, else in the node store.
        Refs inside it are held by it (``owner``: the object's owner, default this process)."""
        if frame.contained_refs:
            self.pin_contained(oid, frame.contained_refs, owner or self.worker_hex)
        size = frame.total_size
        if size <= self._threshold:
            check_inline_size(size, "put()")
            return rec.value_record(frame.to_bytes())
        self.store.put_bytes(oid, frame.write_to, size)
        return rec.stored_record(self.node_hex, size)

    def pin_contained(self, container: bytes, refs: list[Any], owner: str) -> None:
        """``container`` (owned by ``owner``) holds ``refs``: each stays alive until it is freed."""
        chex = container.hex()
        holder = b"o:" + chex.encode()
        commands: list[Any] = []
        for ref in {r.binary(): r for r in refs}.values():
            rid = ref.binary()
            commands.append(("SADD", self.keys.object_holders(rid.hex()), holder))
            commands.append(("RPUSH", self.keys.object_contents(chex),
                             rid + rid.hex().encode() + self.gcs.inbox_key(ref.owner_address()).encode()))
        if owner == self.worker_hex:
            with self.cond:
                self.own.add_container(container)
        else:  # the owner must free it with FREE_OBJECTS, which releases what it holds
            commands.append(("RPUSH", self.keys.inbox(owner), rec.container_message(container)))
        spread.send(self.commands, self.gcs, [self.gcs.tagged(command) for command in commands])

    # -------------------------------------------------------------- freeing
    def drain_released(self) -> None:
        """Count down the refs that died since last time; free what no one holds any more."""
        if not self.own.released:
            return
        with self.cond:
            freed, urgent = self.own.drain_released()
            if freed:
                stale = rec.stored_record(self.node_hex, 0)
                for args_object in self.lineage.outputs_freed(freed, self.own.owned):
                    self.own.to_delete.append((args_object, stale))
        if urgent:
            self.flush_deletes()

    def flush_deletes(self, due_only: bool = False) -> None:
        """Send the frees that are due: local store copies, object records, borrowings.
        ``due_only`` (between inbox batches): at most every FREES_EVERY_S; what cannot wait
        (stored objects' memory, borrowings, FLUSH_AT frees) goes at once from drain_released,
        and a loop of sync calls writes one batch of deletes, not one per call."""
        if due_only:
            now = time.monotonic()
            if now < self._frees_due:
                return
            self._frees_due = now + FREES_EVERY_S
        self.flush_puts()  # a record's delete must not overtake its write
        with self.cond:
            frees = self.own.take_frees()
        if not frees:
            return
        for oid in frees.delete_local:
            self.store.delete(oid)
        if frees.releases:
            spread.send(self.commands, self.gcs, self.gcs.release_holders_commands(frees.releases))
        # shared or containing refs: freed (and releasing what they hold) in Redis
        for tag, command, held in self.gcs.free_objects_commands(frees.held):
            spread.send(self.commands, self.gcs, [(tag, command)], self._on_freed(held))
        if not frees.delete_records:
            return
        # on the command stream, behind the puts that wrote them (a put's record may still
        # be buffered in its burst: a DEL on another connection could run first, and the
        # record would be written after it and kept until the job ends)
        try:
            spread.send(self.commands, self.gcs,
                        self.gcs.delete_objects_commands(oid.hex() for oid in frees.delete_records))
        except Exception:  # cluster going away; job cleanup removes the rest
            pass

    def _on_freed(self, held: list[tuple[bytes, bool]]) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            if isinstance(replies[0], Exception):
                return
            flags = replies[0][0]
            with self.cond:
                gone = self.own.freed_in_redis(held, flags)
            for oid in gone:
                self.store.delete(oid)  # if it was stored here; other nodes' copies go at job end

        return on_reply

    # -------------------------------------------------------------- waiting
    def watch(self, oids: set[bytes] | list[bytes]) -> None:
        """Ensure each object is known or will be announced to this process's inbox."""
        with self.cond:
            need = self.own.to_watch(oids)
        if not need:
            return
        found = self.gcs.fetch_or_wait(self.worker_hex, [o.hex() for o in need])
        with self.cond:
            self.own.watched(need, found)

    def wait_ready(self, oids: list[bytes], num: int, timeout: float | None) -> set[bytes]:
        """Block until at least ``num`` of ``oids`` are resolved (or the timeout passes)."""
        self.drain_released()
        self.watch(oids)
        records = self.own.records
        with self.cond:
            ready = {o for o in oids if o in records}
            if len(ready) >= num or timeout == 0:
                # nothing to wait for: what we buffered goes out with its burst (a loop of
                # put+get writes its records in batches, not one write each)
                return ready
            missing = [o for o in dict.fromkeys(oids) if o not in ready]
        self.commands.push()  # a buffered burst of submissions must not wait for the flusher
        deadline = None if timeout is None else time.monotonic() + timeout
        # waiting for every one (get): the first still missing decides, so each wake-up only
        # moves past what arrived (results come roughly in order), instead of re-checking
        # everything still missing: a get of a million refs stays linear
        every = len(ready) + len(missing) <= num
        first = 0
        # a thread that holds the lock from outside (re-entered) must not read the inbox: it
        # would block everyone else out of the tables while it waits on Redis
        read_inbox = None if self.cond._is_owned() else self._read_inbox  # type: ignore[attr-defined]
        self._set_blocked(True)
        try:
            with self.cond:
                self._waiters += 1
                while True:
                    if every:
                        while first < len(missing) and missing[first] in records:
                            first += 1
                        if first == len(missing):
                            ready.update(missing)
                            return ready
                    else:
                        still = [o for o in missing if o not in records]
                        ready.update(o for o in missing if o in records)
                        missing = still
                        if len(ready) >= num:
                            return ready
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return ready | {o for o in missing if o in records}
                    self._check_redis_reachable()
                    self._check_node_alive()
                    wait_s = REDIS_CHECK_S if remaining is None else min(remaining, REDIS_CHECK_S)
                    # only a lone waiter reads: with several, the inbox thread wakes each
                    # for what it waits for (a waiter reading for the others would hand
                    # off to them anyway, and keep the thread from reading meanwhile)
                    if read_inbox is not None:
                        seen = self.own.arrivals
                        alone = self._waiters == 1
                        self.cond.release()
                        try:
                            read = read_inbox(wait_s, functools.partial(self._arrived_since, seen), alone)
                        finally:
                            self.cond.acquire()
                        # what arrived while we did not hold the lock was filed (and its
                        # waiters woken) then: look at it before waiting for more
                        if read or self.own.arrivals != seen:
                            continue
                    self.cond.wait(wait_s)
        finally:
            with self.cond:
                self._waiters -= 1
            self._set_blocked(False)

    def _arrived_since(self, seen: int) -> bool:
        return self.own.arrivals != seen

    def _check_redis_reachable(self) -> None:
        """Raise if Redis has been unreachable for longer than ``redis_unreachable_timeout_s``:
        whatever we wait for cannot arrive, and a silent hang helps no one."""
        since = self._redis_down_since()
        limit = self.settings.redis_unreachable_timeout_s
        if since is not None and time.monotonic() - since > limit:
            raise RaySystemError(
                f"Redis at {self.gcs.where()} has been unreachable for more than {limit:g}s, so nothing this "
                "process waits for can arrive. Restart Redis (a cluster started with "
                "`rayr start --head --redis-persist` resumes where it was), or raise "
                "redis_unreachable_timeout_s (RAYR_REDIS_UNREACHABLE_TIMEOUT_S) to wait longer."
            )

    def _check_node_alive(self) -> None:
        """Raise if the node this process is attached to was declared dead: its raylet ran our
        tasks and served our objects, so what we wait for may never come (Ray ends such a
        driver; we say why in the waiting call)."""
        if self.node_died is not None:
            raise LocalRayletDiedError(
                f"The node this driver is attached to ({self.node_hex[:12]}) died ({self.node_died}), "
                "and with it the raylet that ran its tasks and served its objects, so what this "
                "get()/wait() waits for may never come. Call rayr.shutdown(), then rayr.init() to "
                "start again."
            )

    def _set_blocked(self, blocked: bool) -> None:
        if self._on_blocked is not None:
            self._on_blocked(blocked)

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        """A future resolved with the ref's value (or error) when its record arrives."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref.binary()
        self.watch([oid])
        with self.cond:
            record = self.own.await_record(oid, ref, fut)
        if record is not None:
            self.resolve_future(fut, oid, record)
        return fut

    def resolve_future(self, fut: concurrent.futures.Future, oid: bytes, record: bytes) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(self.value_of(oid, record))
        except BaseException as err:  # delivered to whoever awaits the future
            fut.set_exception(err)

    # -------------------------------------------------------------- reading
    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Values of ``refs`` in order; raises the first error among them."""
        oids = [r.binary() for r in refs]
        unique = list(dict.fromkeys(oids))
        ready = self.wait_ready(unique, len(unique), timeout)
        if len(ready) < len(unique):
            raise GetTimeoutError(
                f"get() timed out after {timeout}s: {len(unique) - len(ready)} of "
                f"{len(unique)} objects were not ready"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            records = [self.own.records[o] for o in oids]
        return [
            self.value_of(oid, record) if record[0] != rec.STORED  # inline: nothing can be lost
            else self.value_recovering(oid, ref.owner_address(), deadline)
            for oid, record, ref in zip(oids, records, refs, strict=True)
        ]

    def value_recovering(self, oid: bytes, owner: str, deadline: float | None = None) -> Any:
        """The value of a resolved object; a stored object whose every copy is gone is rebuilt
        by its owner (by re-running the task that made it) and then read."""
        for _ in range(4):
            with self.cond:
                record = self.own.records[oid]
            if record[0] != rec.STORED:
                return self.value_of(oid, record)
            try:
                view = self.stored_view(oid, record)
            except ObjectLostError as err:
                self._rebuild(oid, owner, record, err)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if oid not in self.wait_ready([oid], 1, remaining):
                    raise GetTimeoutError(f"get() timed out while {oid.hex()} was being rebuilt") from err
                continue
            return serialization.deserialize(view)
        raise ObjectLostError(oid.hex(), "It was rebuilt several times and lost again each time.")

    def record_of(self, oid: bytes) -> bytes | None:
        with self.cond:
            return self.own.records.get(oid)

    def value_of(self, oid: bytes, record: bytes) -> Any:
        """Deserialize a record; raise it if it is an error."""
        kind = record[0]
        if kind == rec.VALUE:
            return serialization.deserialize(memoryview(record)[1:])
        if kind == rec.ERROR:
            err = serialization.deserialize(memoryview(record)[1:])
            if isinstance(err, RayTaskError):
                raise err.as_instanceof_cause()
            raise err
        return serialization.deserialize(self.stored_view(oid, record))

    def stored_view(self, oid: bytes, record: bytes) -> memoryview:
        """A local, read-only view of a stored object, pulled from its node first if need be."""
        node_hex, size = rec.parse_stored(record)
        view = self.store.get(oid)
        if view is not None:
            return view
        if node_hex == self.node_hex:
            raise ObjectLostError(oid.hex(), f"It is no longer in the object store of node {node_hex[:12]}.")
        shard = self.gcs.shard(spread_tag(oid.hex()))
        return transfer.pull_into_store(  # one pull per object and node at a time
            self.gcs.r, shard, self.keys, self.store, oid, node_hex, size, self.node_hex, self.worker_hex
        )

    # --------------------------------------------------- lineage reconstruction
    def _rebuild(self, oid: bytes, owner: str, record: bytes, err: ObjectLostError) -> None:
        """Start rebuilding a lost object (its record is dropped until the new one arrives);
        raise ``err`` with the reason if it cannot be."""
        if owner == self.worker_hex or (not owner and oid in self.own.owned):
            why = self.reconstruct(oid, record)
            if why is not None:
                raise ObjectLostError(oid.hex(), f"{err.detail} It cannot be rebuilt: {why}.") from None
            return
        if not owner:
            raise err
        holder, _ = rec.parse_stored(record)
        with self.cond:
            if self.own.records.get(oid) == record:
                del self.own.records[oid]
            self.rebuild_acks.discard(oid)
        message = rec.rebuild_request(oid, holder, self.worker_hex)
        self.gcs.push_inbox(owner, message)
        deadline = time.monotonic() + OWNER_ANSWER_S
        with self.cond:
            while oid not in self.rebuild_acks and oid not in self.own.records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OwnerDiedError(
                        oid.hex(), f"{err.detail} Its owner ({owner[:12]}), which could rebuild it, "
                        f"did not answer within {OWNER_ANSWER_S:.0f}s: it has died."
                    ) from None
                self.cond.wait(remaining)
            self.rebuild_acks.discard(oid)

    def on_rebuild_request(self, message: bytes) -> None:
        """A borrower found an object we own lost: rebuild it (once) and announce it to them."""
        oid, holder, borrower = rec.parse_rebuild_request(message)
        with self.cond:
            record = self.own.records.get(oid)
            owned = oid in self.own.owned
        why: str | None = "its owner no longer holds a reference to it"
        if owned:
            stale = record is not None and record[0] == rec.STORED and rec.parse_stored(record)[0] == holder
            why = self.reconstruct(oid, record) if stale and record is not None else None
        if why is not None:
            error = ObjectLostError(oid.hex(), f"Its only copy was on node {holder[:12]}; it cannot "
                                    f"be rebuilt: {why}.")
            reply = rec.object_message(oid, rec.error_record(serialization.serialize(error).to_bytes()))
            self.gcs.push_inbox(borrower, reply)
            return
        self.gcs.push_inbox(borrower, rec.rebuild_ack(oid))
        (found,) = self.gcs.fetch_or_wait(borrower, [oid.hex()])
        if found is not None and found != record:  # already rebuilt: tell them now
            self.gcs.push_inbox(borrower, rec.object_message(oid, found))

    def reconstruct(self, oid: bytes, lost_record: bytes) -> str | None:
        """Re-run the finished task that made ``oid`` (and, first, the tasks that made its lost
        arguments). Returns None once started, else why it cannot be."""
        own = self.own
        with self.cond:
            if oid in own.pending:
                return None  # being rebuilt already
            if own.records.get(oid, lost_record) != lost_record:
                return None  # rebuilt meanwhile
            if oid[16:] == PUT_INDEX:
                return "it was made by put(), not by a task"
            lineage = self.lineage.rerun(oid[:16])
            if isinstance(lineage, str):
                return lineage
            returns = own.prepare_rerun(lineage.spec.return_ids())
            lost_args = [
                (dep, own.records[dep]) for dep in lineage.spec.ref_args
                if dep in own.owned and own.records.get(dep, b"")[:1] == b"S"
            ]
        self.gcs.delete_objects(r.hex() for r in returns)
        for dep, dep_record in lost_args:
            holder, _ = rec.parse_stored(dep_record)
            if not self.gcs.node_alive(holder):
                self.reconstruct(dep, dep_record)  # if it cannot be, the re-run reports the loss
        self.submitter.resubmit(lineage, oid)
        return None
