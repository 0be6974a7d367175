"""The core worker: what every rayr process (driver or worker) uses to own and use objects.

A facade over five parts, each in its own module::

    OwnershipTable  ownership.py  records, ref counts, borrowings, frees      no I/O
    LineageTable    lineage.py    argument holds, lineage, the rerun budget   no I/O
    TaskSubmitter   submitter.py  ids, arguments, dependency waits, routing, actor-call order, cancel
    ObjectClient    objects.py    put/get/wait, reading stored objects, freeing, rebuilding
    InboxReader     inbox.py      the one background thread: reads the inbox, housekeeping

Lock rule: one ``Condition(RLock)``, ``cond``, guards the two tables and the submitter's
queues; they change only through their methods and only under it. It is never held across
Redis, the store or a socket. ``TaskSubmitter.send_lock`` (actor-call order) is taken before
``cond``, never after. ``CommandStream``'s locks are private to it.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rayr.core.events import TaskEvents
from rayr.core.inbox import InboxReader
from rayr.core.lineage import ArgHold, LineageTable
from rayr.core.objects import ObjectClient
from rayr.core.ownership import OwnershipTable
from rayr.core.submitter import TaskSubmitter, WaitingTask
from rayr.gcs import records as rec
from rayr.gcs import spread
from rayr.gcs.client import NODE_DEAD, GcsClient, on_tag
from rayr.gcs.command_stream import CommandStream
from rayr.ids import JobID
from rayr.keys import object_tag, spread_tag
from rayr.object_ref import ObjectRef
from rayr.object_store.base import ObjectStoreBackend
from rayr.task_spec import FIRST_RETURN, TASK, TaskOptions, TaskSpec

if TYPE_CHECKING:
    import redis

    from rayr import serialization
    from rayr.config import Settings


RECHECK_S = 2.0  # on a Redis Cluster, how often objects we wait for are looked up (see _recheck_watched)
RECHECK_MAX = 1000  # ... at most this many at a time

# The task (its id, resources and spec) running in this thread or asyncio task of a worker.
_current_task: contextvars.ContextVar[tuple[bytes, dict[str, float], Any] | None] = contextvars.ContextVar(
    "rayr_current_task", default=None
)


def _current_task_id() -> bytes | None:
    current = _current_task.get()
    return current[0] if current else None


def _current_spec() -> TaskSpec | None:
    current = _current_task.get()
    return current[2] if current else None


class Reporter(Protocol):
    """Something the core sends to the GCS now and then, and once more at shutdown."""

    def flush_due(self) -> None: ...

    def flush(self) -> None: ...


class CoreWorker:
    """Per-process object ownership, task submission and retrieval."""

    def __init__(
        self,
        *,
        gcs: GcsClient,
        blocking_redis: redis.Redis,
        commands: CommandStream,
        settings: Settings,
        node_hex: str,
        store: ObjectStoreBackend,
        job_id: JobID,
        worker_hex: str,
        namespace: str = "",
        on_blocked: Callable[[bool], None] | None = None,
        liveness_ttl_s: float | None = None,
        liveness_redis: redis.Redis | None = None,
    ) -> None:
        self.gcs = gcs
        self.keys = gcs.keys
        self.settings = settings
        self.node_hex = node_hex
        self.store = store
        self.worker_hex = worker_hex
        self.namespace = namespace
        self.commands = commands  # hot-path writes that need no immediate reply
        # a driver keeps its job's liveness key fresh, on a connection named after the job:
        # the monitor ends a job whose key lapsed only once that connection is gone too
        self._liveness_ttl = liveness_ttl_s
        self._liveness: Any = liveness_redis
        self._liveness_due = 0.0
        self._inbox_key = self.keys.inbox(worker_hex)
        self._recheck_due = time.monotonic() + RECHECK_S
        blocking_redis = on_tag(blocking_redis, self.keys, spread_tag(worker_hex))  # the inbox's master

        # what this process sees of tasks, for rayr.util.state (None: task events are off)
        self.events = TaskEvents(gcs=gcs, commands=commands, settings=settings, node_hex=node_hex,
                                 worker_hex=worker_hex) if settings.task_events else None
        # other periodic reports (rayr.util.metrics), sent between inbox batches and at shutdown
        self.reporters: list[Reporter] = []
        self.cond = threading.Condition(threading.RLock())
        self.ownership = OwnershipTable(worker_hex)
        self.lineage = LineageTable()
        parts: dict[str, Any] = dict(
            gcs=gcs, commands=commands, settings=settings, store=store, node_hex=node_hex,
            worker_hex=worker_hex, cond=self.cond, ownership=self.ownership,
            lineage=self.lineage,
        )
        self._inbox = InboxReader(
            blocking_redis=blocking_redis, inbox_key=self._inbox_key,
            taken_key=self.keys.inbox_taken(worker_hex), on_messages=self._on_messages,
            housekeeping=self._housekeeping, wake_waiters=self._wake_waiters,
        )
        self.submitter = TaskSubmitter(job_id=job_id, watch=self._watch,
                                       current_task_id=_current_task_id, current_spec=_current_spec,
                                       events=self.events, **parts)
        self.objects = ObjectClient(submitter=self.submitter, on_blocked=on_blocked,
                                    redis_down_since=lambda: self._inbox.down_since,
                                    read_inbox=self._inbox.read_here, **parts)
        self.envs = self.submitter.envs
        self._refresh_liveness()  # connects the named liveness connection now, from this thread
        self._inbox.start()

    # ------------------------------------------------------- running task
    @property
    def job_id(self) -> JobID:
        """The job what this process submits and puts belongs to: a driver's own, a worker's
        that of the task it runs (``TaskExecutor.enter_job`` sets it)."""
        return self.submitter.job_id

    @job_id.setter
    def job_id(self, value: JobID) -> None:
        self.submitter.job_id = value

    @property
    def current_task_id(self) -> bytes | None:
        return _current_task_id()

    @property
    def current_resources(self) -> dict[str, float]:
        current = _current_task.get()
        return current[1] if current else {}

    @property
    def current_spec(self) -> TaskSpec | None:
        """The spec of the task running here (None in a driver, between tasks)."""
        current = _current_task.get()
        return current[2] if current else None

    def set_current_task(self, task_id: bytes | None, resources: dict[str, float] | None = None,
                         spec: TaskSpec | None = None) -> None:
        _current_task.set((task_id, resources or {}, spec) if task_id else None)

    # ------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Stop the inbox thread and free what this process still owns."""
        if self._inbox.stopping:
            return
        self._inbox.stopping = True
        try:
            self.gcs.push_inbox(self.worker_hex, rec.MSG_STOP)
        except Exception:  # Redis already gone: the thread ends on its own timeout
            pass
        if self._inbox.join(timeout=5) and self._liveness is not None:
            self._liveness.close()
        self.objects.drain_released()
        self.objects.flush_deletes()
        if self.events is not None:
            self.events.flush()
        for reporter in list(self.reporters):
            reporter.flush()
        self.commands.close()
        try:
            self.gcs.drop_inbox(self.worker_hex)
        except Exception:
            pass

    # ------------------------------------------------------ reference counts
    def add_local_ref(self, oid: bytes, owner: str) -> None:
        with self.cond:
            self.ownership.add_ref(oid)

    def release_local_ref(self, oid: bytes) -> None:
        self.ownership.release(oid)  # lock-free: called from __del__

    def mark_shared(self, oid: bytes) -> None:
        with self.cond:
            self.ownership.mark_shared(oid)

    def on_deserialized(self, oid: bytes, owner: str) -> None:
        """A ref to ``oid`` was unpickled here: if another process owns it, register as its
        borrower (before anything this process does next reaches Redis, so before the owner
        can hear that the task or object that carried the ref is done)."""
        with self.cond:
            new = self.ownership.borrow(oid, owner)
        if not new:
            return
        command = ("SADD", self.keys.object_holders(oid.hex()), self.worker_hex)
        if self.gcs.spread_only:
            # on a Redis Cluster the stream to this object's master is not ordered with the
            # one our results go on: written now, so it lands before them
            self.gcs.shard(object_tag(oid.hex())).execute_command(*command)
        else:
            self.commands.send([command])

    def pin_contained(self, container: bytes, refs: list[Any], owner: str) -> None:
        self.objects.pin_contained(container, refs, owner)

    def forget_stream(self, task_id: bytes, first_unread: int) -> None:
        """The generator is gone: free items nobody took, stop accepting new ones."""
        with self.cond:
            self.ownership.forget_stream(task_id, first_unread)

    # ------------------------------------------------------------ submission
    def export_function(self, digest: str, pickled: Callable[[], bytes]) -> str:
        return self.submitter.export_function(digest, pickled)

    def submit_task(
        self,
        function_key: str,
        function_name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        opts: TaskOptions,
        *,
        kind: int = TASK,
        actor_id: str = "",
        method: str = "",
        actor_options: dict[str, Any] | None = None,
        concurrency_group: str = "",
    ) -> list[ObjectRef]:
        """Queue a task, an actor creation or an actor call (see ``TaskSubmitter.submit``)."""
        self.objects.drain_released()
        return self.submitter.submit(function_key, function_name, args, kwargs, opts, kind=kind,
                                     actor_id=actor_id, method=method, actor_options=actor_options,
                                     concurrency_group=concurrency_group)

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        self.submitter.cancel(oid, force, recursive)

    def cancel_children(self, task_id: bytes) -> None:
        self.submitter.cancel_children(task_id)

    def forget_children(self, task_id: bytes) -> None:
        self.submitter.forget_children(task_id)

    # --------------------------------------------------------------- objects
    def put(self, value: Any) -> ObjectRef:
        return self.objects.put(value)

    def make_record(self, oid: bytes, frame: serialization.SerializedObject, owner: str = "") -> bytes:
        return self.objects.make_record(oid, frame, owner)

    def wait_ready(self, oids: list[bytes], num: int, timeout: float | None) -> set[bytes]:
        return self.objects.wait_ready(oids, num, timeout)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        return self.objects.get(refs, timeout)

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        return self.objects.future_of(ref)

    def value_recovering(self, oid: bytes, owner: str, deadline: float | None = None) -> Any:
        return self.objects.value_recovering(oid, owner, deadline)

    def value_of(self, oid: bytes, record: bytes) -> Any:
        return self.objects.value_of(oid, record)

    def stored_view(self, oid: bytes, record: bytes) -> memoryview:
        return self.objects.stored_view(oid, record)

    def record_of(self, oid: bytes) -> bytes | None:
        return self.objects.record_of(oid)

    def _watch(self, oids: set[bytes]) -> None:
        self.objects.watch(oids)

    # ----------------------------------------------------------------- inbox
    def file_messages(self, msgs: list[bytes]) -> None:
        """Take inbox messages handed over in this process (local mode's results)."""
        self._on_messages(msgs)

    def _on_messages(self, msgs: list[bytes]) -> None:
        """A batch from the inbox: file records, then (outside the lock) resolve futures,
        queue tasks whose arguments arrived, drop finished tasks' argument objects and serve
        rebuild requests."""
        ready: list[WaitingTask] = []
        resolved: list[tuple[concurrent.futures.Future, bytes, bytes]] = []
        rebuild_requests: list[bytes] = []
        done: list[bytes] = []
        own, dep_waiters, events = self.ownership, self.submitter.dep_waiters, self.events
        with self.cond:
            for msg in msgs:
                parsed = rec.parse_message(msg)
                if parsed is None:
                    self._on_owner_message(msg, rebuild_requests)
                    continue
                oid, record = parsed
                futures = own.accept(oid, record)
                if futures:
                    resolved.extend((fut, oid, kept) for fut, kept in futures)
                if oid in dep_waiters:
                    self.submitter.deps_arrived(oid, ready)
                if oid[16:] == FIRST_RETURN:
                    done.append(oid[:16])
                    if events is not None:
                        events.owner_done(oid[:16], record)
            finished = self._on_tasks_done(done)
            self.cond.notify_all()
        for fut, oid, record in resolved:
            self.objects.resolve_future(fut, oid, record)
        self.submitter.send_ready(ready)
        for _refs, args_object in finished:
            if args_object is not None:
                self.store.delete(args_object)
                spread.send(self.commands, self.gcs, self.gcs.delete_objects_commands([args_object.hex()]))
        for request in rebuild_requests:
            self.objects.on_rebuild_request(request)

    def _on_owner_message(self, msg: bytes, requests: list[bytes]) -> None:
        """(Under the lock.) Inbox messages other than object records: rebuild requests and
        acknowledgements (R, A), and reference counting (F: last holder gone, C: our object
        contains refs)."""
        kind, oid = rec.owner_message(msg)
        if kind == rec.MSG_REBUILD:
            requests.append(msg)  # served after the batch, outside the lock
        elif kind == rec.MSG_REBUILD_ACK:
            self.objects.rebuild_acks.add(oid)
        elif kind == rec.MSG_FREED:
            self.ownership.on_holders_gone(oid)
        elif kind == rec.MSG_CONTAINER:
            self.ownership.add_container(oid)

    def _on_tasks_done(self, task_ids: list[bytes]) -> list[ArgHold]:
        """(Under the lock, after the whole batch was filed: a task's returns arrive together.)
        Forget finished tasks; returns the argument holds to release now."""
        if not task_ids:
            return []
        self.submitter.tasks_done(task_ids)
        return self.lineage.finish(task_ids, lambda spec: self.ownership.stored_output(spec.return_ids()))

    def _housekeeping(self) -> None:
        """Between inbox batches: count down dead refs, send frees, refresh liveness."""
        self.objects.drain_released()
        self.objects.flush_deletes(due_only=True)
        if self.events is not None:
            self.events.flush_due()
        for reporter in list(self.reporters):
            reporter.flush_due()
        self._refresh_liveness()
        if self.gcs.spread_only and time.monotonic() >= self._recheck_due:
            self._recheck_watched()

    def _recheck_watched(self) -> None:
        """Read the records of objects we wait for but do not own. On a Redis Cluster the
        store script tells a waiter in another slot by a command of its own, after it, which
        a storer that dies in between never sends (its task runs again, but finds the waiter
        gone from the set); so now and then we look for ourselves."""
        self._recheck_due = time.monotonic() + RECHECK_S
        with self.cond:
            missing = [o for o in self.ownership.watching if o not in self.ownership.records][:RECHECK_MAX]
        if not missing:
            return
        found = self.gcs.get_objects([o.hex() for o in missing])
        arrived = [rec.object_message(o, r) for o, r in zip(missing, found, strict=True) if r is not None]
        if arrived:
            self._on_messages(arrived)

    def _wake_waiters(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _refresh_liveness(self) -> None:
        if self._liveness_ttl is None or time.monotonic() < self._liveness_due:
            return
        self._liveness_due = time.monotonic() + min(1.0, self._liveness_ttl / 3)
        client = self._liveness if self._liveness is not None else self.gcs.r
        with client.pipeline(transaction=False) as p:  # and, in the same round trip: our node?
            p.set(self.keys.job_alive(self.job_id.hex()), b"1", px=int(self._liveness_ttl * 1000))
            p.hmget(self.keys.node(self.node_hex), "state", "death_reason")
            _, (state, reason) = p.execute()
        if state == NODE_DEAD.encode() and self.objects.node_died is None:
            self.objects.node_died = (reason or b"").decode() or "no reason recorded"
            self._wake_waiters()  # each raises, naming it


__all__ = ["CoreWorker"]
