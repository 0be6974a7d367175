"""The core worker: what every rayr process (driver or worker) uses to own and use objects.

It submits tasks, stores and fetches objects, counts references and waits for results.
Results reach it through its *inbox*, a Redis list that executors (and the Lua store
script, for objects it waits on but does not own) push to; a background thread drains
the inbox into ``_records`` and wakes whoever waits.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import itertools
import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rayr import resources as res
from rayr import serialization
from rayr.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RaySystemError,
    RayTaskError,
    TaskCancelledError,
)
from rayr.gcs import control
from rayr.gcs import records as rec
from rayr.gcs.client import REDIS_DOWN_ERRORS, GcsClient
from rayr.gcs.command_stream import CommandStream
from rayr.ids import JobID
from rayr.object_ref import ObjectRef
from rayr.object_store import transfer
from rayr.object_store.base import ObjectStoreBackend
from rayr.resources import ACTOR_SHAPE_MARK, ENV_MARK, TARGET_MARK, shape_key
from rayr.routing import Router, in_placement_group
from rayr.runtime_env.resolver import EnvResolver
from rayr.task_spec import (
    ACTOR_CALL,
    ACTOR_CREATION,
    ARGS_OBJECT_INDEX,
    STREAMING,
    TASK,
    ArgRef,
    TaskOptions,
    TaskSpec,
    entry_fields,
)

if TYPE_CHECKING:
    import redis

    from rayr.config import Settings

log = logging.getLogger("rayr.core")
FIRST_RETURN = (1).to_bytes(4, "big")
LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this do not move a task
PUT_INDEX = (0).to_bytes(4, "big")
# the largest value sent inline: Redis refuses a bulk string over 512 MiB (proto-max-bulk-len),
# less room for the rest of the command around it
MAX_INLINE_BYTES = (512 << 20) - (1 << 20)

# The task (and its resources) running in this thread or asyncio task of a worker.
_current_task: contextvars.ContextVar[tuple[bytes, dict[str, float]] | None] = contextvars.ContextVar(
    "rayr_current_task", default=None
)


@dataclass
class _WaitingTask:
    """A submitted task whose ObjectRef arguments may not all be ready yet."""

    spec: TaskSpec
    stream: str  # the task stream it goes to; "" for actor calls (they go to a mailbox)
    missing: set[bytes]
    cancelled: bool = False


@dataclass
class _Lineage:
    """What it takes to run a finished task again if its stored outputs are lost: the spec,
    how it was placed, and its arguments (kept alive, as Ray pins lineage)."""

    spec: TaskSpec
    shape: str
    strategy: Any
    arg_refs: list[ObjectRef]
    args_object: bytes | None
    reruns: int = 0


# a borrower that found an object lost asks its owner to rebuild it (inbox messages R and A,
# see gcs/records.py)
OWNER_ANSWER_S = 5.0  # an owner that does not acknowledge a rebuild request in time is dead
REDIS_CHECK_S = 1.0  # a blocked get/wait looks this often whether Redis has been away too long


class CoreWorker:
    """Per-process object ownership, task submission and retrieval.

    Lock discipline: ``_cond`` guards every dict and set below; Redis calls and store I/O
    happen outside it.
    """

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
        self._id_prefix, self._id_counter = os.urandom(8), itertools.count()
        self._no_args_frame: bytes | None = None
        self.job_id = job_id
        self.worker_hex = worker_hex
        self.namespace = namespace
        self.current_actor_id: str | None = None
        self._on_blocked = on_blocked
        # a driver keeps its job's liveness key fresh, on a connection named after the job:
        # the monitor ends a job whose key lapsed only once that connection is gone too
        self._liveness_ttl = liveness_ttl_s
        self._liveness: Any = liveness_redis
        self._liveness_due = 0.0
        # since when Redis has not answered the inbox thread (None: it answers)
        self._redis_down_since: float | None = None
        self._threshold = settings.inline_threshold
        self._inbox_key = self.keys.inbox(worker_hex)
        self._blocking: Any = blocking_redis
        self.commands = commands  # hot-path writes that need no immediate reply

        self._cond = threading.Condition(threading.RLock())
        self._records: dict[bytes, bytes] = {}  # resolved objects this process holds refs to
        self._pending: set[bytes] = set()  # owned, result not arrived yet
        self._owned: set[bytes] = set()  # owned and not freed
        self._shared: set[bytes] = set()  # owned and pickled: freed once no holder is left (in Redis)
        self._containers: set[bytes] = set()  # owned objects that hold refs: freed with FREE_OBJECTS
        self._borrowed: dict[bytes, str] = {}  # refs unpickled here that others own -> owner
        self._releases: list[tuple[bytes, str, str]] = []  # borrowings to drop: (id, us, owner)
        self._freed_pending: set[bytes] = set()  # freed before its result arrived
        self._watching: set[bytes] = set()  # borrowed; our inbox is registered as waiter
        self._refs: dict[bytes, int] = {}  # live ObjectRef instances per id in this process
        self._released: deque[bytes] = deque()  # ids whose ObjectRef died; counted down later
        self._dep_waiters: dict[bytes, list[_WaitingTask]] = {}
        # task id -> (argument refs kept alive until the task finishes, large-args object id)
        self._inflight: dict[bytes, tuple[list[ObjectRef], bytes | None]] = {}
        self._to_delete: list[tuple[bytes, bytes | None]] = []
        self._pinned_creation_args: list[tuple[list[ObjectRef], bytes | None]] = []
        self._args_sizes: dict[bytes, int] = {}  # large-args object -> bytes, until submitted
        self._streams: set[bytes] = set()  # generator tasks whose items we accept as they come
        # lineage of running tasks (kept on completion while a stored output is referenced)
        self._running_lineage: dict[bytes, _Lineage] = {}
        self._lineage: dict[bytes, _Lineage] = {}  # finished tasks whose outputs can be rebuilt
        self._rebuild_acks: set[bytes] = set()  # objects whose owner acknowledged our request
        # task id -> (stream, entry id, spec) of submitted, unfinished tasks (to cancel them)
        self._submitted: dict[bytes, tuple[str, bytes, TaskSpec]] = {}
        self._children: dict[bytes, list[bytes]] = {}  # running task -> first return of each child
        self.cancelled_tasks: set[bytes] = set()  # calls of this actor cancelled while queued/running
        self._exported: set[str] = set()
        # per actor, this process's calls in submission order; sent head first once ready
        self._actor_queues: dict[str, deque[_WaitingTask]] = {}
        self._send_lock = threading.Lock()  # keeps one process's actor calls in order
        self._shapes: set[str] = set()  # task streams this process has announced
        self._router = Router(gcs)
        # the runtime env tasks submitted here inherit, and each task env's hash
        self.envs = EnvResolver(gcs.r, self.keys, settings.runtime_env_max_package_bytes)
        self._stopping = False
        # futures of ObjectRefs (await ref): resolved by the inbox thread, no thread each
        self._futures: dict[bytes, list[tuple[ObjectRef, concurrent.futures.Future]]] = {}
        self._refresh_liveness()  # connects the named liveness connection now, from this thread
        self._inbox_thread = threading.Thread(target=self._inbox_loop, name="rayr-inbox", daemon=True)
        self._inbox_thread.start()

    @property
    def current_task_id(self) -> bytes | None:
        current = _current_task.get()
        return current[0] if current else None

    @property
    def current_resources(self) -> dict[str, float]:
        current = _current_task.get()
        return current[1] if current else {}

    def set_current_task(self, task_id: bytes | None, resources: dict[str, float] | None = None) -> None:
        _current_task.set((task_id, resources or {}) if task_id else None)

    # ------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Stop the inbox thread and free what this process still owns."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self.gcs.r.rpush(self._inbox_key, rec.MSG_STOP)
        except Exception:  # Redis already gone: the thread ends on its own timeout
            pass
        self._inbox_thread.join(timeout=5)
        if not self._inbox_thread.is_alive():
            self._blocking.close()
            if self._liveness is not None:
                self._liveness.close()
        self._drain_released()
        self._flush_deletes()
        self.commands.close()
        try:
            self.gcs.r.delete(self._inbox_key)
        except Exception:
            pass

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        """A future resolved with the ref's value (or error) when its record arrives."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref.binary()
        self._watch([oid])
        with self._cond:
            record = self._records.get(oid)
            if record is None:
                # the ref rides along so the record is kept until the future is resolved
                self._futures.setdefault(oid, []).append((ref, fut))
                return fut
        self._resolve_future(fut, oid, record)
        return fut

    def _resolve_future(self, fut: concurrent.futures.Future, oid: bytes, record: bytes) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(self.value_of(oid, record))
        except BaseException as err:  # delivered to whoever awaits the future
            fut.set_exception(err)

    # ------------------------------------------------------ reference counts
    def add_local_ref(self, oid: bytes, owner: str) -> None:
        with self._cond:
            self._refs[oid] = self._refs.get(oid, 0) + 1

    def release_local_ref(self, oid: bytes) -> None:
        # Called from __del__, possibly inside a locked section of this very thread:
        # only record it; counts are updated at the next safe point.
        self._released.append(oid)

    def mark_shared(self, oid: bytes) -> None:
        with self._cond:
            if oid in self._owned:
                self._shared.add(oid)

    def on_deserialized(self, oid: bytes, owner: str) -> None:
        """A ref to ``oid`` was unpickled here: if another process owns it, register as its
        borrower (before anything this process does next reaches Redis, so before the owner
        can hear that the task or object that carried the ref is done)."""
        if not owner or owner == self.worker_hex:
            return
        with self._cond:
            if oid in self._borrowed:
                return
            self._borrowed[oid] = owner
        self.commands.send([("SADD", self.keys.object_holders(oid.hex()), self.worker_hex)])

    def pin_contained(self, container: bytes, refs: list[Any], owner: str) -> None:
        """``container`` (owned by ``owner``) holds ``refs``: each stays alive until it is freed."""
        chex = container.hex()
        holder = b"o:" + chex.encode()
        commands: list[Any] = []
        for ref in {r.binary(): r for r in refs}.values():
            rid = ref.binary()
            commands.append(("SADD", self.keys.object_holders(rid.hex()), holder))
            commands.append(("RPUSH", self.keys.object_contents(chex),
                             rid + rid.hex().encode() + ref.owner_address().encode()))
        if owner == self.worker_hex:
            with self._cond:
                self._containers.add(container)
        else:  # the owner must free it with FREE_OBJECTS, which releases what it holds
            commands.append(("RPUSH", self.keys.inbox(owner), rec.container_message(container)))
        self.commands.send(commands)

    def _drain_released(self) -> None:
        if not self._released:
            return
        stored_freed = False
        with self._cond:
            while self._released:
                oid = self._released.popleft()
                left = self._refs.get(oid, 0) - 1
                if left > 0:
                    self._refs[oid] = left
                    continue
                self._refs.pop(oid, None)
                record = self._records.pop(oid, None)
                owner = self._borrowed.pop(oid, None)
                if owner is not None:
                    self._releases.append((oid, self.worker_hex, owner))
                if oid not in self._owned:
                    continue
                self._owned.discard(oid)
                lineage = self._lineage.get(oid[:16])
                if lineage is not None and not any(r in self._owned for r in lineage.spec.return_ids()):
                    del self._lineage[oid[:16]]  # its arguments are released with it
                    if lineage.args_object is not None:
                        self._to_delete.append(
                            (lineage.args_object, rec.stored_record(self.node_hex, 0))
                        )
                if oid in self._pending:
                    self._pending.discard(oid)
                    self._freed_pending.add(oid)
                else:
                    self._to_delete.append((oid, record))
                    # a stored object's memory is worth having back (and reusing) at once
                    stored_freed = stored_freed or bool(record and record[0] == rec.STORED)
            flush = stored_freed or len(self._to_delete) >= 256 or bool(self._releases)
        if flush:
            self._flush_deletes()

    def _flush_deletes(self) -> None:
        with self._cond:
            batch, self._to_delete = self._to_delete, []
            releases, self._releases = self._releases, []
            held = [(oid, oid not in self._shared) for oid, _ in batch
                    if oid in self._shared or oid in self._containers]
            self._containers.difference_update(oid for oid, _ in held)
        if not batch and not releases:
            return
        plain = [(oid, record) for oid, record in batch if oid not in self._shared]
        for oid, record in plain:
            if record and record[0] == rec.STORED:
                self.store.delete(oid)
        commands: list[Any] = []
        if releases:
            commands.append(self.gcs.release_holders_command(releases))
        if held:  # shared or containing refs: freed (and releasing what they hold) in Redis
            commands.append(self.gcs.free_objects_command(held))
        if commands:
            self.commands.send(commands, self._on_freed(held) if held else None)
        in_script = {oid for oid, _ in held}
        simple = [oid.hex() for oid, _ in plain if oid not in in_script]
        try:
            self.gcs.delete_objects(simple)
        except Exception:  # cluster going away; job cleanup removes the rest
            pass

    def _on_freed(self, held: list[tuple[bytes, bool]]) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            flags = replies[-1]
            if isinstance(flags, Exception):
                return
            for (oid, _), freed in zip(held, flags, strict=True):
                if freed and oid in self._shared:
                    with self._cond:
                        self._shared.discard(oid)
                    self.store.delete(oid)  # if it was stored here; other nodes' copies go at job end

        return on_reply

    def _on_holders_gone(self, oid: bytes) -> None:
        """The last borrower or container of ``oid`` let go (under the lock)."""
        if oid in self._shared and self._refs.get(oid, 0) == 0 and oid not in self._owned:
            self._to_delete.append((oid, None))

    # ----------------------------------------------------------------- inbox
    def _inbox_loop(self) -> None:
        while not self._stopping:
            msgs: list[bytes] = []
            try:
                item = self._blocking.blpop([self._inbox_key], timeout=1)
                if item is not None:
                    msgs.append(item[1])
                    more = self._blocking.lpop(self._inbox_key, 1024)
                    if more:
                        msgs.extend(more)
            except REDIS_DOWN_ERRORS:
                if self._stopping:
                    return
                if self._redis_down_since is None:
                    self._redis_down_since = time.monotonic()
                with self._cond:
                    self._cond.notify_all()  # waiters check how long Redis has been away
                time.sleep(0.2)  # e.g. Redis restarting: what was popped is still handled below
            else:
                self._redis_down_since = None
            try:
                if msgs:
                    self._on_messages(msgs)
                self._drain_released()
                self._flush_deletes()
                self._refresh_liveness()
            except Exception:
                if self._stopping:
                    return
                log.exception("handling inbox messages failed")
                time.sleep(0.2)

    def _refresh_liveness(self) -> None:
        if self._liveness_ttl is None or time.monotonic() < self._liveness_due:
            return
        self._liveness_due = time.monotonic() + min(1.0, self._liveness_ttl / 3)
        client = self._liveness if self._liveness is not None else self.gcs.r
        client.set(self.keys.job_alive(self.job_id.hex()), b"1", px=int(self._liveness_ttl * 1000))

    def _on_messages(self, msgs: list[bytes]) -> None:
        ready: list[_WaitingTask] = []
        resolved: list[tuple[concurrent.futures.Future, bytes, bytes]] = []
        rebuild_requests: list[bytes] = []
        done: list[bytes] = []
        with self._cond:
            for msg in msgs:
                parsed = rec.parse_message(msg)
                if parsed is None:
                    self._on_owner_message(msg, rebuild_requests)
                    continue
                oid, record = parsed
                self._accept(oid, record)
                if oid in self._futures and oid in self._records:
                    resolved.extend((fut, oid, self._records[oid]) for _, fut in self._futures.pop(oid))
                for waiting in self._dep_waiters.pop(oid, ()):
                    waiting.missing.discard(oid)
                    if not waiting.missing:
                        ready.append(waiting)
                if oid[16:] == FIRST_RETURN:
                    done.append(oid[:16])
            finished = self._on_tasks_done(done)
            self._cond.notify_all()
        self._after_messages(resolved, ready, finished, rebuild_requests)

    def _after_messages(
        self,
        resolved: list[tuple[concurrent.futures.Future, bytes, bytes]],
        ready: list[_WaitingTask],
        finished: list[tuple[list[ObjectRef], bytes | None]],
        rebuild_requests: list[bytes],
    ) -> None:
        """What a batch of inbox messages calls for, done outside the lock: resolve futures,
        submit tasks whose arguments arrived, drop finished tasks' argument objects, serve
        rebuild requests."""
        for fut, oid, record in resolved:
            self._resolve_future(fut, oid, record)
        for waiting in ready:
            if waiting.cancelled:
                continue
            if waiting.spec.kind == ACTOR_CALL:
                self._flush_actor_queue(waiting.spec.actor_id)
            else:
                self._submit_ready(waiting.spec, waiting.stream)
        for _refs, args_object in finished:
            if args_object is not None:
                self.store.delete(args_object)
                self.gcs.delete_objects([args_object.hex()])
        for request in rebuild_requests:
            self._on_rebuild_request(request)

    def _on_owner_message(self, msg: bytes, requests: list[bytes]) -> None:
        """Inbox messages other than object records: rebuild requests and acknowledgements
        (R, A), and reference counting (F: last holder gone, C: our object contains refs)."""
        kind, oid = rec.owner_message(msg)
        if kind == rec.MSG_REBUILD:
            requests.append(msg)  # served after the batch, outside the lock
        elif kind == rec.MSG_REBUILD_ACK:
            self._rebuild_acks.add(oid)
        elif kind == rec.MSG_FREED:
            self._on_holders_gone(oid)
        elif kind == rec.MSG_CONTAINER:
            self._containers.add(oid)

    def _on_tasks_done(self, task_ids: list[bytes]) -> list[tuple[list[ObjectRef], bytes | None]]:
        """Forget finished tasks (under the lock, after their whole batch was filed: a task's
        returns arrive together); returns the argument holds to release now."""
        finished = []
        for task_id in task_ids:
            self._submitted.pop(task_id, None)
            held = self._inflight.pop(task_id, None)
            lineage = self._running_lineage.pop(task_id, None)
            if lineage is not None and self._keeps_lineage(lineage.spec):
                self._lineage[task_id] = lineage  # holds the arguments until the outputs die
            elif held is not None:
                finished.append(held)
        return finished

    def _keeps_lineage(self, spec: TaskSpec) -> bool:
        """Whether a finished task is worth re-running later: some output of it is stored in a
        node's store (inline values live in Redis and are never lost) and still referenced."""
        for rid in spec.return_ids():
            record = self._records.get(rid)
            if rid in self._owned and record is not None and record[0] == rec.STORED:
                return True
        return False

    def _accept(self, oid: bytes, record: bytes) -> None:
        """File one arrived record (under the lock)."""
        self._watching.discard(oid)
        if oid in self._pending:
            self._pending.discard(oid)
            self._records[oid] = record
        elif oid in self._refs:
            # the first record wins: a call failed by an actor's death may still finish
            self._records.setdefault(oid, record)
        elif oid in self._freed_pending:
            self._freed_pending.discard(oid)
            self._to_delete.append((oid, record))
        elif oid[:16] in self._streams:  # a generator's item: ours before any ref exists
            self._records.setdefault(oid, record)
            self._owned.add(oid)

    # ------------------------------------------------------------ submission
    def export_function(self, digest: str, pickled: Callable[[], bytes]) -> str:
        """The function-table key for this job, exporting the function on first use."""
        key = self.keys.function(self.job_id.hex(), digest)
        if key not in self._exported:
            self.gcs.export_function(self.job_id.hex(), digest, pickled())
            self._exported.add(key)
        return key

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
    ) -> list[ObjectRef]:
        """Queue a task, an actor creation or an actor call.

        Returns one ref per return value (one hidden ref for num_returns=0).
        """
        self._drain_released()
        stream = shape = ""
        if kind != ACTOR_CALL:
            opts, shape, stream, actor_options = self._route(opts, kind, function_name, actor_options)
        task_id = self.job_id.binary() + self._unique_suffix()
        frame_bytes, args_object, arg_refs, held = self._pack_arguments(task_id, function_name, args, kwargs)
        spec = TaskSpec(
            task_id=task_id,
            job_hex=self.job_id.hex(),
            function_key=function_key,
            function_name=function_name,
            args=frame_bytes,
            args_object=args_object,
            ref_args=tuple(r.binary() for r in arg_refs),
            dep_records={},
            num_returns=opts.num_returns,
            resources=opts.resources,
            max_retries=opts.max_retries,
            retry_exceptions=opts.retry_exceptions,
            owner=self.worker_hex,
            attempt=0,
            name=opts.name or function_name,
            kind=kind,
            actor_id=actor_id,
            method=method,
            actor_options=actor_options,
        )
        return_ids = spec.return_ids()
        parent = self.current_task_id
        with self._cond:
            if parent is not None:
                self._children.setdefault(parent, []).append(return_ids[0])
            self._pending.update(return_ids)
            self._owned.update(return_ids)
            if opts.num_returns == STREAMING:
                self._streams.add(task_id)  # before submitting: items may arrive at once
            if kind != ACTOR_CREATION:
                self._inflight[task_id] = (held, args_object)
            else:
                # a restarted actor re-reads its creation arguments: keep them for the job
                self._pinned_creation_args.append((held, args_object))
            if kind == TASK and opts.max_retries != 0 and opts.num_returns != STREAMING:
                self._running_lineage[task_id] = _Lineage(spec, shape, opts.strategy, held, args_object)
        refs = [ObjectRef(oid, self.worker_hex) for oid in return_ids]
        deps = set(spec.ref_args)
        if deps:
            self._watch(deps)
        with self._cond:
            missing = {d for d in deps if d not in self._records}
            waiting = _WaitingTask(spec, stream, missing)
            for dep in missing:
                self._dep_waiters.setdefault(dep, []).append(waiting)
            if kind == ACTOR_CALL:
                self._actor_queues.setdefault(actor_id, deque()).append(waiting)
        if kind == ACTOR_CALL:
            self._flush_actor_queue(actor_id)
        elif not missing:
            self._submit_ready(spec, stream)
        return refs

    def _route(
        self, opts: TaskOptions, kind: int, function_name: str, actor_options: dict[str, Any] | None
    ) -> tuple[TaskOptions, str, str, dict[str, Any] | None]:
        """(options, shape, stream, actor options) of a task or an actor creation: inside a
        placement group it asks for its bundle's resources, with a runtime env it gets its
        env's stream, and actor creations get streams of their own (a worker leased to a
        shape's task stream must never take a creation from it)."""
        request = in_placement_group(opts.resources, opts.strategy)
        if request is not opts.resources:
            opts = replace(opts, resources=request, shape=shape_key(request))
        shape = ACTOR_SHAPE_MARK + opts.shape if kind == ACTOR_CREATION else opts.shape
        if opts.runtime_env is not None or self.envs.parent_hash:
            env = self.envs.hash_for(opts.runtime_env)
            if env:  # its own stream: only workers started in that env take from it
                shape += ENV_MARK + env
                if kind == ACTOR_CREATION:  # restarts find their env here
                    actor_options = {**(actor_options or {}), "runtime_env": env}
        key, node = self._router.route(shape, opts.resources, opts.strategy)
        return opts, shape, self._ensure_stream(key, node, opts.resources, function_name), actor_options

    def _unique_suffix(self) -> bytes:
        """12 bytes no other process or call produces: a random per-process prefix and a
        counter (a getrandom call per task costs more than the rest of an id's making)."""
        n = next(self._id_counter)
        if n >= 1 << 32:  # the counter ran out: a fresh prefix
            self._id_prefix, self._id_counter = os.urandom(8), itertools.count(1)
            n = 0
        return self._id_prefix + n.to_bytes(4, "big")

    def _pack_arguments(
        self, task_id: bytes, function_name: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[bytes, bytes | None, list[ObjectRef], list[ObjectRef]]:
        """(inline args frame, id of a stored args frame, top-level ObjectRef args, every ref
        the arguments hold: the top-level ones and those nested inside).

        Top-level refs become ArgRef placeholders resolved by the executor; a frame over the
        inline threshold goes to the node store so large arguments are never copied into Redis.
        """
        arg_refs: list[ObjectRef] = []

        def swap(value: Any) -> Any:
            if type(value) is ObjectRef:
                arg_refs.append(value)
                return ArgRef(len(arg_refs) - 1)
            return value

        if not args and not kwargs:  # a frame the same for every call, made once
            if self._no_args_frame is None:
                self._no_args_frame = serialization.serialize(((), {})).to_bytes()
            return self._no_args_frame, None, [], []
        call_args = tuple(swap(a) for a in args)
        call_kwargs = {k: swap(v) for k, v in kwargs.items()}
        try:
            frame = serialization.serialize((call_args, call_kwargs))
        except Exception as err:
            raise TypeError(serialization.unpicklable_message(function_name, args, kwargs, err)) from err
        # refs nested in the arguments are held with the top-level ones until the task ends;
        # the executor registers as their borrower before that
        held = arg_refs + list(frame.contained_refs)
        if frame.total_size <= self._threshold:
            self._check_inline_size(frame.total_size, f"the arguments of {function_name}()")
            return frame.to_bytes(), None, arg_refs, held
        args_object = task_id + ARGS_OBJECT_INDEX.to_bytes(4, "big")
        self.store.put_bytes(args_object, frame.write_to, frame.total_size)
        record = rec.stored_record(self.node_hex, frame.total_size)
        self.commands.send([self.gcs.store_objects_command([(args_object, record, "")])])
        self._args_sizes[args_object] = frame.total_size
        return b"", args_object, arg_refs, held

    def forget_stream(self, task_id: bytes, first_unread: int) -> None:
        """The generator is gone: free items nobody took, stop accepting new ones."""
        with self._cond:
            self._streams.discard(task_id)
            unread = [
                o for o in self._records
                if o[:16] == task_id and int.from_bytes(o[16:], "big") >= first_unread
            ]
            for oid in unread:
                if oid not in self._refs:
                    record = self._records.pop(oid)
                    self._owned.discard(oid)
                    self._to_delete.append((oid, record))

    def _flush_actor_queue(self, actor_id: str) -> None:
        """Send this process's queued calls to an actor, in order, while the head is ready."""
        with self._send_lock:
            while True:
                with self._cond:
                    queue = self._actor_queues.get(actor_id)
                    if not queue or queue[0].missing:
                        return
                    waiting = queue.popleft()
                    if not queue:
                        del self._actor_queues[actor_id]
                if waiting.cancelled:
                    continue
                spec = self._with_inline_deps(waiting.spec)
                command = self.gcs.submit_actor_call_command(actor_id, spec.encode())
                self.commands.send([command], self._on_actor_call_queued(spec))

    def _on_actor_call_queued(self, spec: TaskSpec) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            reply = replies[0]
            if isinstance(reply, Exception):
                self.gcs.fail_tasks([spec], ActorDiedError(f"Could not call the actor: {reply}"))
            elif not reply[0]:
                cause = reply[1].decode(errors="replace")
                self.gcs.fail_tasks([spec], ActorDiedError(f"The actor {spec.actor_id} is dead: {cause}"))
            else:
                self._remember_submitted(spec, self.keys.actor_mailbox(spec.actor_id), reply[1])

        return on_reply

    def _remember_submitted(self, spec: TaskSpec, stream: str, entry_id: bytes) -> None:
        """Where a task waits, so it can be cancelled; only while it is unfinished."""
        with self._cond:
            if spec.return_ids()[0] in self._pending:
                self._submitted[spec.task_id] = (stream, entry_id, spec)

    def _with_inline_deps(self, spec: TaskSpec) -> TaskSpec:
        """The spec with small resolved dependencies inlined, so the executor need not fetch them."""
        if not spec.ref_args:
            return spec
        inline = {}
        with self._cond:
            for dep in spec.ref_args:
                record = self._records.get(dep)
                if record is not None and record[0] != rec.STORED and len(record) <= self._threshold:
                    inline[dep] = record
        return spec._replace(dep_records=inline)

    def _near_large_arguments(self, spec: TaskSpec, stream: str) -> str:
        """Pull a DEFAULT task toward the node holding most of its large arguments, when that
        node has room for it now: moving the task is cheaper than moving the bytes."""
        if not (spec.ref_args or spec.args_object) or spec.kind != TASK:
            return stream  # the common case, on every submission: nothing large to follow
        shared = self.keys.shape_stream("")
        if not stream.startswith(shared):
            return stream
        held: dict[str, int] = {}
        if spec.args_object is not None:  # large arguments passed by value sit in our store
            held[self.node_hex] = self._args_sizes.pop(spec.args_object, 0)
        with self._cond:
            for dep in spec.ref_args:
                record = self._records.get(dep)
                if record is not None and record[0] == rec.STORED:
                    node, size = rec.parse_stored(record)
                    held[node] = held.get(node, 0) + size
        if not held:
            return stream
        node, size = max(held.items(), key=lambda kv: kv[1])
        if size < LOCALITY_MIN_BYTES:
            return stream
        target = next((n for n in self._router.alive_nodes() if n["node_id"] == node), None)
        if target is None or not res.fits(target["resources_available"], spec.resources):
            return stream
        shape = stream[len(shared):]
        return self._ensure_stream(TARGET_MARK + shape, node, spec.resources, spec.function_name)

    def _submit_ready(self, spec: TaskSpec, stream: str) -> None:
        spec = self._with_inline_deps(spec)
        stream = self._near_large_arguments(spec, stream)
        fields = entry_fields(spec.encode(), creation=spec.kind == ACTOR_CREATION)
        command = ("XADD", stream, "*", *[x for kv in fields.items() for x in kv])

        def on_reply(replies: list[Any]) -> None:
            if isinstance(replies[0], Exception):
                self.gcs.fail_tasks([spec], RaySystemError(f"Could not queue the task: {replies[0]}"))
            else:
                self._remember_submitted(spec, stream, replies[0])

        self.commands.send([command], on_reply)

    # ---------------------------------------------------------- cancellation
    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        """Cancel the task that produces ``oid`` (see ``rayr.cancel``)."""
        task_id = oid[:16]
        self.commands.flush()  # learn the stream entries of everything submitted so far
        if oid[16:] == PUT_INDEX:
            raise TypeError(
                f"cancel() needs the ref of a task's output; {oid.hex()} was made by put(), "
                "and no task produces it"
            )
        with self._cond:
            if oid not in self._owned and oid not in self._records and task_id not in self._submitted:
                raise ValueError(
                    f"cancel(): this process does not own {oid.hex()}; only the process that "
                    "submitted a task can cancel it"
                )
            if oid in self._records and oid not in self._pending:
                return  # already finished
            entry = self._submitted.get(task_id)
            waiting = self._find_waiting(task_id)
        spec = waiting.spec if waiting is not None else entry[2] if entry is not None else None
        if spec is not None and spec.kind == ACTOR_CALL and force:
            raise ValueError("force=True is not supported for actor tasks; use kill() on the actor")
        error = TaskCancelledError(f"Task {spec.name if spec else task_id.hex()} was cancelled.")
        if waiting is not None:
            waiting.cancelled = True
            self.gcs.fail_tasks([waiting.spec], error)
            return
        if entry is None:
            return
        stream, entry_id, spec = entry
        if spec.kind == ACTOR_CALL:
            status = self.gcs.cancel_actor_call(spec.actor_id, entry_id, task_id.hex())
        else:
            flags = ",".join(f for f, on in (("force", force), ("recursive", recursive)) if on)
            status, _node = self.gcs.cancel_task(stream, entry_id, task_id.hex(), flags)
        if status == "deleted":  # never reached an executor: resolve it here
            self.gcs.fail_tasks([spec], error)

    def _find_waiting(self, task_id: bytes) -> _WaitingTask | None:
        for group in (*self._dep_waiters.values(), *self._actor_queues.values()):
            for waiting in group:
                if waiting.spec.task_id == task_id and not waiting.cancelled:
                    return waiting
        return None

    def cancel_children(self, task_id: bytes) -> None:
        """Cancel (recursively) the unfinished tasks that task ``task_id`` submitted."""
        with self._cond:
            children = [c for c in self._children.get(task_id, []) if c in self._pending]
        for child in children:
            try:
                self.cancel(child, force=False, recursive=True)
            except ValueError:  # an actor call: not force-cancellable, nothing more to do
                pass

    def forget_children(self, task_id: bytes) -> None:
        with self._cond:
            self._children.pop(task_id, None)

    def is_cancelled(self, task_id: bytes) -> bool:
        if task_id in self.cancelled_tasks:
            return True
        if self.gcs.cancel_flags(task_id.hex()) is None:
            return False
        self.cancelled_tasks.add(task_id)  # so the call's result is reported as cancelled
        return True

    def _ensure_stream(self, key: str, node: str, request: dict[str, float], name: str) -> str:
        """The stream for scheduler ``key`` (targeted at ``node`` if given), announced to the
        raylets that should read it the first time this process uses it."""
        stream = self.keys.task_stream(key, node)
        if stream in self._shapes:
            return stream
        self.gcs.ensure_group(stream)
        if node:
            added = self.gcs.r.sadd(self.keys.node_shapes(node), key[len(TARGET_MARK):])
            targets = [node] if added else []
            nodes = self._router.alive_nodes()
        else:
            added = self.gcs.r.sadd(self.keys.shapes, key)
            nodes = self.gcs.alive_nodes()
            targets = [n["node_id"] for n in nodes] if added else []
        if targets:  # new stream: tell the raylets to start reading it now
            with self.gcs.r.pipeline(transaction=False) as p:
                for target in targets:
                    p.xadd(self.keys.node_stream(target), control.Poke().fields())
                p.execute()
        if not node and not any(res.fits(n["resources_total"], request) for n in nodes):
            totals = [n["resources_total"] for n in nodes]
            warnings.warn(
                f"Task {name!r} requests {request}, but no node in the cluster has that much "
                f"(node totals: {totals}). It stays queued until a node that fits joins.",
                RuntimeWarning,
                stacklevel=4,
            )
        self._shapes.add(stream)
        return stream

    # --------------------------------------------------------------- objects
    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` as a new object owned by this process."""
        self._drain_released()
        try:
            frame = serialization.serialize(value)
        except Exception as err:
            raise TypeError(f"put(): could not serialize {type(value).__name__}: {err}") from err
        oid = self.job_id.binary() + self._unique_suffix() + PUT_INDEX
        record = self.make_record(oid, frame)
        # written on the command stream: any task that later receives the ref is queued
        # on the same connection, after it, so it always finds the record
        with self._cond:
            self._records[oid] = record
            self._owned.add(oid)
        self.commands.send([self.gcs.store_objects_command([(oid, record, "")])], self._on_put_reply(oid))
        return ObjectRef(oid, self.worker_hex)

    def _on_put_reply(self, oid: bytes) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            if isinstance(replies[0], Exception):  # not stored: a get must say so, not hang
                error = RaySystemError(f"put() of {oid.hex()} failed in Redis: {replies[0]}")
                with self._cond:
                    if oid in self._records:
                        self._records[oid] = rec.error_record(serialization.dumps(error))
        return on_reply

    def make_record(self, oid: bytes, frame: serialization.SerializedObject, owner: str = "") -> bytes:
        """An object-table record for ``frame``: inline when small, else in the node store.
        Refs inside it are held by it (``owner``: the object's owner, default this process)."""
        if frame.contained_refs:
            self.pin_contained(oid, frame.contained_refs, owner or self.worker_hex)
        size = frame.total_size
        if size <= self._threshold:
            self._check_inline_size(size, "put()")
            return rec.value_record(frame.to_bytes())
        self.store.put_bytes(oid, frame.write_to, size)
        return rec.stored_record(self.node_hex, size)

    def _check_inline_size(self, size: int, what: str) -> None:
        """Refuse a value Redis cannot take in one command (only a driver with no node on its
        host sends values this big inline): Redis would drop the connection mid-command."""
        if size > MAX_INLINE_BYTES:
            raise ValueError(
                f"{what}: {size / 2**20:.1f} MiB cannot travel inline through Redis, which takes "
                f"at most {MAX_INLINE_BYTES / 2**20:.0f} MiB per value (proto-max-bulk-len). This "
                "driver runs on a host with no rayr node, so its objects have no object store: "
                "start a node on this host (`rayr start --address <cluster address>`), or split "
                "the value into smaller objects."
            )

    def _watch(self, oids: set[bytes] | list[bytes]) -> None:
        """Ensure each object is known or will be announced to this process's inbox."""
        with self._cond:
            need = [
                o for o in oids
                if o not in self._records and o not in self._pending and o not in self._watching
                and o[:16] not in self._streams
            ]
            self._watching.update(need)
        if not need:
            return
        found = self.gcs.fetch_or_wait(self.worker_hex, [o.hex() for o in need])
        with self._cond:
            for oid, record in zip(need, found, strict=True):
                if record is not None:
                    self._watching.discard(oid)
                    if oid in self._refs:
                        self._records[oid] = record

    def wait_ready(self, oids: list[bytes], num: int, timeout: float | None) -> set[bytes]:
        """Block until at least ``num`` of ``oids`` are resolved (or the timeout passes)."""
        self.commands.push()  # a buffered burst of submissions must not wait for the flusher
        self._drain_released()
        self._watch(oids)
        records = self._records
        with self._cond:
            ready = {o for o in oids if o in records}
            if len(ready) >= num or timeout == 0:
                return ready
            missing = [o for o in dict.fromkeys(oids) if o not in ready]
        deadline = None if timeout is None else time.monotonic() + timeout
        self._set_blocked(True)
        try:
            with self._cond:
                while True:
                    # only re-check what is still missing: a wait on many refs stays linear
                    still = [o for o in missing if o not in records]
                    ready.update(o for o in missing if o in records)
                    missing = still
                    if len(ready) >= num:
                        return ready
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return ready
                    self._check_redis_reachable()
                    self._cond.wait(REDIS_CHECK_S if remaining is None else min(remaining, REDIS_CHECK_S))
        finally:
            self._set_blocked(False)

    def _check_redis_reachable(self) -> None:
        """Raise if Redis has been unreachable for longer than ``redis_unreachable_timeout_s``:
        whatever we wait for cannot arrive, and a silent hang helps no one."""
        since = self._redis_down_since
        limit = self.settings.redis_unreachable_timeout_s
        if since is not None and time.monotonic() - since > limit:
            kwargs = self.gcs.r.connection_pool.connection_kwargs
            where = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
            raise RaySystemError(
                f"Redis at {where} has been unreachable for more than {limit:g}s, so nothing this "
                "process waits for can arrive. Restart Redis (a cluster started with "
                "`rayr start --head --redis-persist` resumes where it was), or raise "
                "redis_unreachable_timeout_s (RAYR_REDIS_UNREACHABLE_TIMEOUT_S) to wait longer."
            )

    def _set_blocked(self, blocked: bool) -> None:
        if self._on_blocked is not None:
            self._on_blocked(blocked)

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
        with self._cond:
            records = [self._records[o] for o in oids]
        return [
            self.value_of(oid, record) if record[0] != rec.STORED  # inline: nothing can be lost
            else self.value_recovering(oid, ref.owner_address(), deadline)
            for oid, record, ref in zip(oids, records, refs, strict=True)
        ]

    def value_recovering(self, oid: bytes, owner: str, deadline: float | None = None) -> Any:
        """The value of a resolved object; a stored object whose every copy is gone is rebuilt
        by its owner (by re-running the task that made it) and then read."""
        for _ in range(4):
            with self._cond:
                record = self._records[oid]
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

    # --------------------------------------------------- lineage reconstruction
    def _rebuild(self, oid: bytes, owner: str, record: bytes, err: ObjectLostError) -> None:
        """Start rebuilding a lost object (its record is dropped until the new one arrives);
        raise ``err`` with the reason if it cannot be."""
        if owner == self.worker_hex or (not owner and oid in self._owned):
            why = self._reconstruct(oid, record)
            if why is not None:
                raise ObjectLostError(oid.hex(), f"{err.detail} It cannot be rebuilt: {why}.") from None
            return
        if not owner:
            raise err
        holder, _ = rec.parse_stored(record)
        with self._cond:
            if self._records.get(oid) == record:
                del self._records[oid]
            self._rebuild_acks.discard(oid)
        message = rec.rebuild_request(oid, holder, self.worker_hex)
        self.gcs.r.rpush(self.keys.inbox(owner), message)
        deadline = time.monotonic() + OWNER_ANSWER_S
        with self._cond:
            while oid not in self._rebuild_acks and oid not in self._records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OwnerDiedError(
                        oid.hex(), f"{err.detail} Its owner ({owner[:12]}), which could rebuild it, "
                        f"did not answer within {OWNER_ANSWER_S:.0f}s: it has died."
                    ) from None
                self._cond.wait(remaining)
            self._rebuild_acks.discard(oid)

    def _on_rebuild_request(self, message: bytes) -> None:
        """A borrower found an object we own lost: rebuild it (once) and announce it to them."""
        oid, holder, borrower = rec.parse_rebuild_request(message)
        with self._cond:
            record = self._records.get(oid)
            owned = oid in self._owned
        why: str | None = "its owner no longer holds a reference to it"
        if owned:
            stale = record is not None and record[0] == rec.STORED and rec.parse_stored(record)[0] == holder
            why = self._reconstruct(oid, record) if stale and record is not None else None
        if why is not None:
            error = ObjectLostError(oid.hex(), f"Its only copy was on node {holder[:12]}; it cannot "
                                    f"be rebuilt: {why}.")
            reply = rec.object_message(oid, rec.error_record(serialization.serialize(error).to_bytes()))
            self.gcs.r.rpush(self.keys.inbox(borrower), reply)
            return
        self.gcs.r.rpush(self.keys.inbox(borrower), rec.rebuild_ack(oid))
        (found,) = self.gcs.fetch_or_wait(borrower, [oid.hex()])
        if found is not None and found != record:  # already rebuilt: tell them now
            self.gcs.r.rpush(self.keys.inbox(borrower), rec.object_message(oid, found))

    def _node_alive(self, node_hex: str) -> bool:
        return self.gcs.r.hget(self.keys.node(node_hex), "state") == b"ALIVE"

    def _reconstruct(self, oid: bytes, lost_record: bytes) -> str | None:
        """Re-run the finished task that made ``oid`` (and, first, the tasks that made its lost
        arguments). Returns None once started, else why it cannot be."""
        task_id = oid[:16]
        with self._cond:
            if oid in self._pending:
                return None  # being rebuilt already
            if self._records.get(oid, lost_record) != lost_record:
                return None  # rebuilt meanwhile
            lineage = self._lineage.get(task_id)
            if lineage is None:
                if oid[16:] == PUT_INDEX:
                    return "it was made by put(), not by a task"
                return "no lineage was kept for it (an actor's result, max_retries=0, or a streamed item)"
            spec = lineage.spec
            if spec.max_retries != -1 and lineage.reruns >= spec.max_retries:
                return f"its task {spec.name!r} was already re-run {lineage.reruns} times (max_retries)"
            lineage.reruns += 1
            del self._lineage[task_id]
            returns = [r for r in spec.return_ids() if r in self._owned]
            for rid in returns:
                self._records.pop(rid, None)
                self._pending.add(rid)
            self._inflight[task_id] = (lineage.arg_refs, lineage.args_object)
            self._running_lineage[task_id] = lineage
            lost_args = [
                (dep, self._records[dep]) for dep in spec.ref_args
                if dep in self._owned and self._records.get(dep, b"")[:1] == b"S"
            ]
        self.gcs.delete_objects(r.hex() for r in returns)
        for dep, dep_record in lost_args:
            holder, _ = rec.parse_stored(dep_record)
            if not self._node_alive(holder):
                self._reconstruct(dep, dep_record)  # if it cannot be, the re-run reports the loss
        spec = spec._replace(attempt=spec.attempt + 1)
        try:
            key, node = self._router.route(lineage.shape, spec.resources, lineage.strategy)
            stream = self._ensure_stream(key, node, spec.resources, spec.function_name)
        except Exception as err:  # e.g. hard affinity to the node that died
            self.gcs.fail_tasks([spec], ObjectLostError(oid.hex(), f"Re-running {spec.name!r} failed: {err}"))
            return None
        with self._cond:
            missing = {d for d in spec.ref_args if d not in self._records}
            waiting = _WaitingTask(spec, stream, missing)
            for dep in missing:
                self._dep_waiters.setdefault(dep, []).append(waiting)
        if not missing:
            self._submit_ready(spec, stream)
        return None

    def record_of(self, oid: bytes) -> bytes | None:
        with self._cond:
            return self._records.get(oid)

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
        return self._pull(oid, node_hex, size)

    def _pull(self, oid: bytes, holder: str, size: int) -> memoryview:
        """Copy an object from ``holder`` into this node's store; one pull per node at a time."""
        return transfer.pull_into_store(
            self.gcs.r, self.keys, self.store, oid, holder, size, self.node_hex, self.worker_hex
        )


__all__ = ["CoreWorker"]
