"""Task submission: ids, argument packing, dependency waits, per-actor call order, routing to
a task stream, and cancellation.

A task whose ObjectRef arguments are all resolved is queued at once (XADD on the command
stream, or the actor's mailbox script); otherwise it waits in ``dep_waiters`` until the inbox
files the missing records. Calls to one actor leave this process in submission order.
"""

from __future__ import annotations

import itertools
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
from rayr.core.events import TaskEvents
from rayr.core.lineage import Lineage, LineageTable
from rayr.core.ownership import OwnershipTable
from rayr.exceptions import ActorDiedError, ObjectLostError, RaySystemError, TaskCancelledError
from rayr.gcs import records as rec
from rayr.gcs import spread
from rayr.gcs.client import GcsClient
from rayr.gcs.command_stream import BURST_GAP_S, BURST_MAX, CommandStream
from rayr.ids import JobID
from rayr.keys import spread_tag, with_object_tag
from rayr.object_ref import ObjectRef
from rayr.object_store.base import ObjectStoreBackend
from rayr.resources import ACTOR_SHAPE_MARK, ENV_MARK, NESTED_MARK, TARGET_MARK, shape_key
from rayr.routing import Router, in_placement_group
from rayr.runtime_env.resolver import EnvResolver
from rayr.scheduling_strategies import GroupRef, PlacementGroupSchedulingStrategy
from rayr.task_spec import (
    ACTOR_CALL,
    ACTOR_CREATION,
    ARGS_OBJECT_INDEX,
    DYNAMIC,
    FIRST_RETURN,
    SPEC_FIELD,
    STREAMING,
    TASK,
    ArgRef,
    TaskOptions,
    TaskSpec,
    entry_fields,
)

if TYPE_CHECKING:
    from rayr.config import Settings

LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this do not move a task
PUT_INDEX = (0).to_bytes(4, "big")
# the largest value sent inline: Redis refuses a bulk string over 512 MiB (proto-max-bulk-len),
# less room for the rest of the command around it
MAX_INLINE_BYTES = (512 << 20) - (1 << 20)


def check_inline_size(size: int, what: str) -> None:
    """Refuse a value Redis cannot take in one command (only a driver with no node on its host
    sends values this big inline): Redis would drop the connection mid-command."""
    if size > MAX_INLINE_BYTES:
        raise ValueError(
            f"{what}: {size / 2**20:.1f} MiB cannot travel inline through Redis, which takes "
            f"at most {MAX_INLINE_BYTES / 2**20:.0f} MiB per value (proto-max-bulk-len). This "
            "driver runs on a host with no rayr node, so its objects have no object store: "
            "start a node on this host (`rayr start --address <cluster address>`), or split "
            "the value into smaller objects."
        )


# arguments of these types pickle alike with the standard pickler (an ArgRef by reference)
PLAIN_ARGS = serialization.PLAIN_TYPES | {ArgRef}
ROUTES_KEPT = 1024  # plain tasks' routes kept, per options object

# shared by every spec and hold that has none (never mutated: inlining replaces dep_records)
NO_DEPS: dict[bytes, bytes] = {}
NO_REFS: list[Any] = []

@dataclass
class WaitingTask:
    """A submitted task whose ObjectRef arguments may not all be ready yet."""

    spec: TaskSpec
    stream: str  # the task stream it goes to; "" for actor calls (they go to a mailbox)
    missing: set[bytes]
    cancelled: bool = False


class TaskSubmitter:
    """Submits tasks, actor creations and actor calls for one process.

    Its tables (``dep_waiters``, ``actor_queues``, ``submitted``, ``children``) change only
    under ``cond``, the core worker's one lock; ``send_lock`` (actor-call order) is taken
    before ``cond``, never after.
    """

    def __init__(
        self,
        *,
        gcs: GcsClient,
        commands: CommandStream,
        settings: Settings,
        store: ObjectStoreBackend,
        job_id: JobID,
        node_hex: str,
        worker_hex: str,
        cond: threading.Condition,
        ownership: OwnershipTable,
        lineage: LineageTable,
        watch: Callable[[set[bytes]], None],
        current_task_id: Callable[[], bytes | None],
        current_spec: Callable[[], TaskSpec | None] = lambda: None,
        events: TaskEvents | None = None,
    ) -> None:
        self.gcs = gcs
        self.keys = gcs.keys
        self.commands = commands
        self.store = store
        self.job_id = job_id  # a worker's changes with the job of the task it runs (facade)
        self.node_hex = node_hex
        self.worker_hex = worker_hex
        self.cond = cond
        self.own = ownership
        self.lineage = lineage
        self._watch = watch
        self._current_task_id = current_task_id
        self._current_spec = current_spec
        # in an actor's worker: (group, capture) of its creation, which its calls' tasks follow
        self.actor_group: tuple[str, bool] | None = None
        # init(local_mode=True): runs each ready task and actor call in this process instead
        self.local: Callable[[TaskSpec], None] | None = None
        self.events = events
        self._threshold = settings.inline_threshold
        # the ids made here carry this process's inbox tag: its objects' keys share a slot
        # with its inbox (keys.object_tag), so storing a result and telling us is one script
        self._tag = spread_tag(worker_hex)
        self._id_prefix, self._id_counter = with_object_tag(os.urandom(8), self._tag), itertools.count()
        self._no_args_frame: bytes | None = None
        self._exported: set[str] = set()
        # (scheduler key, node) -> the announced task stream (under our tag, as our objects)
        self._stream_names: dict[tuple[str, str], str] = {}
        # (id of a plain task's options, nested) -> (those options, routed options, shape, stream)
        self._routes: dict[tuple[int, bool], tuple[TaskOptions, TaskOptions, str, str]] = {}
        self._function_keys: dict[tuple[str, str], str] = {}  # (job hex, digest) -> exported key
        self._args_sizes: dict[bytes, int] = {}  # large-args object -> bytes, until submitted
        self.router = Router(gcs)
        # the runtime env tasks submitted here inherit, and each task env's hash
        self.envs = EnvResolver(gcs.r, self.keys, settings.runtime_env_max_package_bytes)
        self.dep_waiters: dict[bytes, list[WaitingTask]] = {}
        # per actor, this process's calls in submission order; sent head first once ready
        self.actor_queues: dict[str, deque[WaitingTask]] = {}
        self.send_lock = threading.RLock()  # reentrant: a local-mode actor call may call actors
        # actors with calls held back in a burst, sent together at the next push (under cond)
        self._deferred: set[str] = set()
        self._last_call = 0.0  # when the last actor call was submitted (perf_counter)
        # tasks held back in a burst: (command stream, spec, task stream, XADD), in order;
        # _held_send_lock keeps them in order with what is sent at once after them
        self._held: list[tuple[CommandStream, TaskSpec, str, tuple[Any, ...]]] = []
        self._held_lock = threading.Lock()
        self._held_send_lock = threading.Lock()
        self._last_task = 0.0
        commands.before_push(self.flush_held)
        # task id -> (stream, entry id, spec) of submitted, unfinished tasks (to cancel them)
        self.submitted: dict[bytes, tuple[str, bytes, TaskSpec]] = {}
        self.children: dict[bytes, list[bytes]] = {}  # running task -> first return of each child

    # ------------------------------------------------------------------ ids
    def unique_suffix(self) -> bytes:
        """12 bytes no other process or call produces: a random per-process prefix (60 random
        bits, and this process's spread tag in the low four bits of its first byte) and a
        counter (a getrandom call per task costs more than the rest of an id's making)."""
        n = next(self._id_counter)
        if n >= 1 << 32:  # the counter ran out: a fresh prefix
            self._id_prefix, self._id_counter = with_object_tag(os.urandom(8), self._tag), itertools.count(1)
            n = 0
        return self._id_prefix + n.to_bytes(4, "big")

    def export_function(self, digest: str, pickled: Callable[[], bytes]) -> str:
        """The function-table key for this job, exporting the function on first use."""
        job_hex = self.job_id.hex()
        key = self._function_keys.get((job_hex, digest))
        if key is None:  # one string shared by every spec of the function
            key = self.keys.function(job_hex, digest)
            if key not in self._exported:
                self.gcs.export_function(job_hex, digest, pickled())
                self._exported.add(key)
            self._function_keys[(job_hex, digest)] = key
        return key

    # ----------------------------------------------------------- submission
    def submit(
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
        """Queue a task, an actor creation or an actor call; one ref per return value (one
        hidden ref for num_returns=0)."""
        parent = self._current_task_id()
        stream = shape = ""
        group, capture = "", False
        if kind != ACTOR_CALL:
            # a plain task's route (options, shape, stream) is the same every call: kept per
            # options object (nearly every .remote() is of a function's own options)
            plain = kind == TASK and opts.runtime_env is None and not self.envs.parent_hash \
                and opts.strategy in (None, "DEFAULT") and not self.current_group()[0]
            route = self._routes.get((id(opts), parent is not None)) if plain else None
            if route is not None and route[0] is opts:
                _, opts, shape, stream = route
            else:
                given = opts
                opts = self._captured(opts)
                strategy = opts.strategy
                if isinstance(strategy, PlacementGroupSchedulingStrategy) and strategy.placement_group:
                    group = strategy.placement_group.id
                    capture = bool(strategy.placement_group_capture_child_tasks)
                opts, shape, stream, actor_options = self._route(opts, kind, function_name, actor_options)
                if plain:
                    if len(self._routes) >= ROUTES_KEPT:  # e.g. .options() made anew for each call
                        self._routes.clear()
                    self._routes[(id(given), parent is not None)] = (given, opts, shape, stream)
        task_id = self.job_id.binary() + self.unique_suffix()
        frame_bytes, args_object, arg_refs, held = self._pack_arguments(task_id, function_name, args, kwargs)
        # positional: a NamedTuple built from 22 keywords costs ~4 us, this ~0.5 us
        spec = TaskSpec._make((
            task_id,
            self.job_id.hex(),
            function_key,
            function_name,
            frame_bytes,  # args
            args_object,
            tuple(r.binary() for r in arg_refs) if arg_refs else (),  # ref_args
            NO_DEPS,  # dep_records
            opts.num_returns,
            opts.resources,
            opts.max_retries,
            opts.retry_exceptions,
            self.worker_hex,  # owner
            0,  # attempt
            opts.name or function_name,  # name
            kind,
            actor_id,
            method,
            actor_options,
            group,  # placement_group
            capture,  # capture_children
            concurrency_group,
        ))
        return_ids = spec.return_ids()
        deps = spec.ref_args
        waiting: WaitingTask | None = None
        with self.cond:
            if parent is not None:
                self.children.setdefault(parent, []).append(return_ids[0])
            # a generator's items may arrive at once: accepted from before it is queued
            self.own.own_returns(return_ids, task_id if opts.num_returns in (STREAMING, DYNAMIC) else None)
            self.lineage.start(spec, held, args_object, shape, opts.strategy)
            for oid in return_ids:  # the refs made below: counted here, under this lock
                self.own.add_ref(oid)
            refs: list[ObjectRef[Any]] = [ObjectRef._counted(oid, self.worker_hex) for oid in return_ids]
            if kind == ACTOR_CALL and not deps:  # nothing to watch first: queued under this hold
                waiting = self._queue(spec, stream, kind, actor_id)
        if deps:
            self._watch(set(deps))
            with self.cond:
                waiting = self._queue(spec, stream, kind, actor_id)
        missing = waiting is not None and bool(waiting.missing)
        if self.events is not None:
            self.events.submitted(spec, parent, opts.shape, missing)
        if kind == ACTOR_CALL:
            self._call_soon(actor_id)
        elif not missing:
            self.submit_ready(spec, stream, burst=True)
        return refs

    def _queue(self, spec: TaskSpec, stream: str, kind: int, actor_id: str) -> WaitingTask:
        """(Under the lock.) The task waiting for its unresolved arguments; an actor call also
        joins its actor's queue of this process's calls."""
        waiting = self._wait_for(spec, stream)
        if kind == ACTOR_CALL:
            self.actor_queues.setdefault(actor_id, deque()).append(waiting)
        return waiting

    def _wait_for(self, spec: TaskSpec, stream: str) -> WaitingTask:
        """(Under the lock.) The task, waiting for whichever of its arguments are unresolved."""
        records = self.own.records
        waiting = WaitingTask(spec, stream, {d for d in spec.ref_args if d not in records})
        for dep in waiting.missing:
            self.dep_waiters.setdefault(dep, []).append(waiting)
        return waiting

    def resubmit(self, lineage: Lineage, oid: bytes) -> None:
        """Run a finished task again (lineage reconstruction of ``oid``)."""
        spec = lineage.spec._replace(attempt=lineage.spec.attempt + 1)
        try:
            key, node = self.router.route(lineage.shape, spec.resources, lineage.strategy)
            stream = self.ensure_stream(key, node, spec.resources, spec.function_name)
        except Exception as err:  # e.g. hard affinity to the node that died
            self.gcs.fail_tasks([spec], ObjectLostError(oid.hex(), f"Re-running {spec.name!r} failed: {err}"))
            return
        with self.cond:
            waiting = self._wait_for(spec, stream)
        if not waiting.missing:
            self.submit_ready(spec, stream)

    def deps_arrived(self, oid: bytes, ready: list[WaitingTask]) -> None:
        """(Under the lock.) ``oid``'s record was filed: tasks it completes go to ``ready``."""
        for waiting in self.dep_waiters.pop(oid, ()):
            waiting.missing.discard(oid)
            if not waiting.missing:
                ready.append(waiting)

    def send_ready(self, ready: list[WaitingTask]) -> None:
        """Queue tasks whose arguments all arrived (outside the lock)."""
        for waiting in ready:
            if waiting.cancelled:
                continue
            if self.events is not None:
                self.events.queued(waiting.spec.task_id)
            if waiting.spec.kind == ACTOR_CALL:
                self.flush_actor_queue(waiting.spec.actor_id)
            else:
                self.submit_ready(waiting.spec, waiting.stream)

    def current_group(self) -> tuple[str, bool]:
        """(hex of the placement group the running task or actor is in, or "", whether what it
        starts is captured into that group)."""
        if self.actor_group is not None:
            return self.actor_group
        spec = self._current_spec()
        return (spec.placement_group, spec.capture_children) if spec is not None else ("", False)

    def _captured(self, opts: TaskOptions) -> TaskOptions:
        """A task with no strategy of its own, started by one whose group captures its
        children, runs in any bundle of that group (and captures its own children), as in Ray."""
        if opts.strategy not in (None, "DEFAULT"):
            return opts
        group, capture = self.current_group()
        if not (group and capture):
            return opts
        return replace(opts, strategy=PlacementGroupSchedulingStrategy(GroupRef(group), -1, True))

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
        if kind == ACTOR_CREATION:
            shape = ACTOR_SHAPE_MARK + opts.shape
        elif self._current_task_id() is not None:  # a task's child: read before top-level tasks
            shape = NESTED_MARK + opts.shape
        else:
            shape = opts.shape
        if opts.runtime_env is not None or self.envs.parent_hash:
            env = self.envs.hash_for(opts.runtime_env)
            if env:  # its own stream: only workers started in that env take from it
                shape += ENV_MARK + env
                if kind == ACTOR_CREATION:  # restarts find their env here
                    actor_options = {**(actor_options or {}), "runtime_env": env}
        key, node = self.router.route(shape, opts.resources, opts.strategy)
        return opts, shape, self.ensure_stream(key, node, opts.resources, function_name), actor_options

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
            return self._no_args_frame, None, NO_REFS, NO_REFS
        call_args = tuple(swap(a) for a in args)
        call_kwargs = {k: swap(v) for k, v in kwargs.items()}
        plain = all(type(a) in PLAIN_ARGS for a in call_args)
        if plain and all(type(v) in PLAIN_ARGS for v in call_kwargs.values()):
            # cloudpickle would make the same bytes: its pickler alone costs ~10 us to set up
            frame = serialization.serialize_plain((call_args, call_kwargs))
        else:
            try:
                frame = serialization.serialize((call_args, call_kwargs))
            except Exception as err:
                raise TypeError(serialization.unpicklable_message(function_name, args, kwargs, err)) from err
        # refs nested in the arguments are held with the top-level ones until the task ends;
        # the executor registers as their borrower before that
        held = arg_refs + frame.contained_refs if frame.contained_refs else arg_refs
        size = frame.total_size
        if size <= self._threshold:
            if size > MAX_INLINE_BYTES:
                check_inline_size(size, f"the arguments of {function_name}()")
            return frame.to_bytes(), None, arg_refs, held
        args_object = task_id + ARGS_OBJECT_INDEX.to_bytes(4, "big")
        self.store.put_bytes(args_object, frame.write_to, frame.total_size)
        record = rec.stored_record(self.node_hex, frame.total_size)
        spread.send(self.commands, self.gcs, self.gcs.store_objects_commands([(args_object, record, "")]))
        self._args_sizes[args_object] = frame.total_size
        return b"", args_object, arg_refs, held

    def _call_soon(self, actor_id: str) -> None:
        """Send an actor's queued calls now, or, inside a burst of calls (the last one came
        within BURST_GAP_S), at the next push (a get or wait, the flusher within
        FLUSH_AFTER_S, or BURST_MAX calls queued): a burst's calls to an actor then go out
        as one batch, with one send and one reply callback, instead of one each."""
        now = time.perf_counter()
        burst, self._last_call = now - self._last_call < BURST_GAP_S, now
        if not burst or self.local is not None:
            self.flush_actor_queue(actor_id)
            return
        with self.cond:
            self._deferred.add(actor_id)
            full = len(self.actor_queues.get(actor_id, ())) >= BURST_MAX
        if full:
            self.flush_actor_queue(actor_id)
        else:
            self.commands.wake_flusher()

    def flush_held(self) -> None:
        """Send the tasks and actor calls held back in a burst (``CommandStream.before_push``)."""
        if self._held:
            with self._held_send_lock:
                self._send_held_tasks()
        if not self._deferred:
            return
        with self.cond:
            actors, self._deferred = self._deferred, set()
        for actor_id in actors:
            self.flush_actor_queue(actor_id)

    def _send_held_tasks(self) -> None:
        """(Under _held_send_lock.) One send per command stream for the held tasks, in order."""
        with self._held_lock:
            held, self._held = self._held, []
        for target, run in itertools.groupby(held, key=lambda item: item[0]):  # streams compare by identity
            batch = list(run)
            target.send([command for _, _, _, command in batch],
                        self._on_tasks_queued([(spec, stream) for _, spec, stream, _ in batch]))

    def flush_actor_queue(self, actor_id: str) -> None:
        """Send this process's queued calls to an actor, in order, while the head is ready:
        up to BURST_MAX in one send."""
        with self.send_lock:
            while True:
                ready: list[WaitingTask] = []
                with self.cond:
                    queue = self.actor_queues.get(actor_id)
                    while queue and not queue[0].missing and len(ready) < BURST_MAX:
                        ready.append(queue.popleft())
                    if queue is not None and not queue:
                        del self.actor_queues[actor_id]
                if not ready:
                    return
                specs = [self._with_inline_deps(w.spec) for w in ready if not w.cancelled]
                if not specs:
                    continue
                if self.local is not None:
                    for spec in specs:
                        self.local(spec)
                    continue
                commands = self.gcs.submit_actor_call_commands(actor_id, [spec.encode() for spec in specs])
                stream = spread.stream_for(self.commands, self.gcs, commands[0][1])
                stream.send(commands, self._on_actor_calls_queued(specs, commands[0][1]))

    def _on_actor_calls_queued(self, specs: list[TaskSpec], mailbox: str) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            entries = []
            for spec, reply in zip(specs, replies, strict=True):
                if isinstance(reply, Exception):
                    self.gcs.fail_tasks([spec], ActorDiedError(f"Could not call the actor: {reply}",
                                                              spec.actor_id))
                elif reply is None:  # no mailbox: the actor is dead or unknown
                    cause = self.gcs.actor_death_cause(spec.actor_id)
                    self.gcs.fail_tasks([spec], ActorDiedError(
                        f"The actor {spec.actor_id} is dead: {cause}", spec.actor_id))
                else:
                    entries.append((spec, reply))
            if entries:
                self._remember_submitted(entries, mailbox)

        return on_reply

    def _remember_submitted(self, entries: list[tuple[TaskSpec, bytes]], stream: str) -> None:
        """Where tasks wait (spec, entry id on ``stream``), so they can be cancelled; only
        while they are unfinished."""
        with self.cond:
            pending = self.own.pending
            for spec, entry_id in entries:
                if spec.task_id + FIRST_RETURN in pending:
                    self.submitted[spec.task_id] = (stream, entry_id, spec)

    def _with_inline_deps(self, spec: TaskSpec) -> TaskSpec:
        """The spec with small resolved dependencies inlined, so the executor need not fetch them."""
        if not spec.ref_args:
            return spec
        inline = {}
        with self.cond:
            for dep in spec.ref_args:
                record = self.own.records.get(dep)
                if record is not None and record[0] != rec.STORED and len(record) <= self._threshold:
                    inline[dep] = record
        return spec._replace(dep_records=inline)

    def _near_large_arguments(self, spec: TaskSpec, stream: str) -> str:
        """Pull a DEFAULT task toward the node holding most of its large arguments, when that
        node has room for it now: moving the task is cheaper than moving the bytes."""
        if not (spec.ref_args or spec.args_object) or spec.kind != TASK:
            return stream  # the common case, on every submission: nothing large to follow
        shared = self.keys.shape_stream("", self._tag)
        if not stream.startswith(shared):
            return stream
        held: dict[str, int] = {}
        if spec.args_object is not None:  # large arguments passed by value sit in our store
            held[self.node_hex] = self._args_sizes.pop(spec.args_object, 0)
        with self.cond:
            for dep in spec.ref_args:
                record = self.own.records.get(dep)
                if record is not None and record[0] == rec.STORED:
                    node, size = rec.parse_stored(record)
                    held[node] = held.get(node, 0) + size
        if not held:
            return stream
        node, size = max(held.items(), key=lambda kv: kv[1])
        if size < LOCALITY_MIN_BYTES:
            return stream
        target = next((n for n in self.router.alive_nodes() if n.node_id == node), None)
        if target is None or not res.fits(target.resources_available, spec.resources):
            return stream
        shape = stream[len(shared):]
        return self.ensure_stream(TARGET_MARK + shape, node, spec.resources, spec.function_name)

    def submit_ready(self, spec: TaskSpec, stream: str, burst: bool = False) -> None:
        """Queue a task whose arguments are all resolved on its stream. With ``burst`` (a
        ``.remote()`` call), one that comes within BURST_GAP_S of the last is held back and
        sent with the rest of its burst at the next push (as actor calls, see _call_soon)."""
        spec = self._with_inline_deps(spec)
        if self.local is not None:
            self.local(spec)
            return
        stream = self._near_large_arguments(spec, stream)
        if spec.kind == ACTOR_CREATION:
            fields = entry_fields(spec.encode(), creation=True)
            command: tuple[Any, ...] = ("XADD", stream, "*", *[x for kv in fields.items() for x in kv])
        else:  # entry_fields' one field, spelled out on the hot path
            command = ("XADD", stream, "*", SPEC_FIELD, spec.encode())
        # on a Redis Cluster: the stream to our tag's master, which our large-arguments
        # objects and results share (so the task comes after its arguments' records)
        target = spread.stream_for(self.commands, self.gcs, stream)
        if burst:
            now = time.perf_counter()
            held, self._last_task = now - self._last_task < BURST_GAP_S, now
            if held:
                with self._held_lock:
                    self._held.append((target, spec, stream, command))
                    full = len(self._held) >= BURST_MAX
                if full:
                    with self._held_send_lock:
                        self._send_held_tasks()
                else:
                    self.commands.wake_flusher()
                return
        with self._held_send_lock:
            if self._held:  # they came first: they go first
                self._send_held_tasks()
            target.send([command], self._on_tasks_queued([(spec, stream)]))

    def _on_tasks_queued(self, items: list[tuple[TaskSpec, str]]) -> Callable[[list[Any]], None]:
        def on_reply(replies: list[Any]) -> None:
            queued: dict[str, list[tuple[TaskSpec, bytes]]] = {}
            for (spec, stream), reply in zip(items, replies, strict=True):
                if isinstance(reply, Exception):
                    self.gcs.fail_tasks([spec], RaySystemError(f"Could not queue the task: {reply}"))
                else:
                    queued.setdefault(stream, []).append((spec, reply))
            for stream, entries in queued.items():
                self._remember_submitted(entries, stream)

        return on_reply

    def ensure_stream(self, key: str, node: str, request: dict[str, float], name: str) -> str:
        """The stream for scheduler ``key`` (targeted at ``node`` if given), announced to the
        raylets that should read it the first time this process uses it."""
        stream = self._stream_names.get((key, node))
        if stream is not None:  # one string shared by every task of the stream
            return stream
        stream = self.keys.task_stream(key, node, self._tag)
        self.gcs.ensure_group(stream)
        added = self.gcs.announce_stream(stream)
        if node:
            targets = [node] if added else []
            nodes = self.router.alive_nodes()
        else:
            nodes = self.gcs.alive_nodes()
            targets = [n.node_id for n in nodes] if added else []
        if targets:  # new stream: tell the raylets to start reading it now
            self.gcs.poke(targets)
        if not node and not any(res.fits(n.resources_total, request) for n in nodes):
            totals = [n.resources_total for n in nodes]
            warnings.warn(
                f"Task {name!r} requests {request}, but no node in the cluster has that much "
                f"(node totals: {totals}). It stays queued until a node that fits joins.",
                RuntimeWarning,
                stacklevel=5,
            )
        self._stream_names[(key, node)] = stream
        return stream

    def tasks_done(self, task_ids: list[bytes]) -> None:
        """(Under the lock.) Finished tasks can no longer be cancelled."""
        for task_id in task_ids:
            self.submitted.pop(task_id, None)

    # ---------------------------------------------------------- cancellation
    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        """Cancel the task that produces ``oid`` (see ``rayr.cancel``)."""
        task_id = oid[:16]
        if oid[16:] == PUT_INDEX:
            raise TypeError(
                f"cancel() needs the ref of a task's output; {oid.hex()} was made by put(), "
                "and no task produces it"
            )
        flushed = False
        while True:
            with self.cond:
                own = self.own
                if oid not in own.owned and oid not in own.records and task_id not in self.submitted:
                    raise ValueError(
                        f"cancel(): this process does not own {oid.hex()}; only the process that "
                        "submitted a task can cancel it"
                    )
                if oid in own.records and oid not in own.pending:
                    return  # already finished
                entry = self.submitted.get(task_id)
                waiting = self._find_waiting(task_id)
            # still queued here (e.g. a call held back in a burst): cancelled before it goes;
            # else learn the stream entries of everything submitted so far, and look again
            if waiting is not None or flushed:
                break
            self.commands.flush()
            flushed = True
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

    def _find_waiting(self, task_id: bytes) -> WaitingTask | None:
        for group in (*self.dep_waiters.values(), *self.actor_queues.values()):
            for waiting in group:
                if waiting.spec.task_id == task_id and not waiting.cancelled:
                    return waiting
        return None

    def cancel_children(self, task_id: bytes) -> None:
        """Cancel (recursively) the unfinished tasks that task ``task_id`` submitted."""
        with self.cond:
            children = [c for c in self.children.get(task_id, []) if c in self.own.pending]
        for child in children:
            try:
                self.cancel(child, force=False, recursive=True)
            except ValueError:  # an actor call: not force-cancellable, nothing more to do
                pass

    def forget_children(self, task_id: bytes) -> None:
        with self.cond:
            self.children.pop(task_id, None)
