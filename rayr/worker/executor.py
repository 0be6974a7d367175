"""The worker process: runs the tasks its raylet hands it over a local socket.

Started by the raylet as ``python -m rayr.worker`` (or forked by its zygote). The messages on
the socket are in ``rayr/protocol.py``: the raylet sends ``RunTasks`` (with a lease the worker
keeps taking tasks of that stream itself afterwards), ``BecomeActor`` and ``Exit``; the worker
answers ``Ready`` once, then ``Done`` after each batch and lease, ``Blocked`` around every
wait in ``get``, and, as an actor, ``ActorReady`` or ``ActorFailed``. Results never pass
through the raylet: the worker stores them and acknowledges the stream entry in one Redis
round trip (``ResultDelivery``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import redis

from rayr import accelerators, context, log_config, protocol, serialization
from rayr.config import child_settings
from rayr.core import CoreWorker
from rayr.exceptions import RayTaskError, TaskCancelledError
from rayr.gcs import command_stream, spread
from rayr.gcs import records as rec
from rayr.gcs.client import (
    RECONNECT_S,
    REDIS_DOWN_ERRORS,
    GcsClient,
    connect_as,
    no_retry,
    on_tag,
    until_reachable,
)
from rayr.gcs.stream_read import read_command, read_group, read_reply
from rayr.ids import JobID
from rayr.keys import TASK_GROUP, Keys
from rayr.log_stream import OutputCapture, encode
from rayr.object_ref import ObjectRef
from rayr.object_store.registry import open_backend
from rayr.runtime_env.validation import run_setup_hook
from rayr.streaming import DynamicObjectRefGenerator
from rayr.task_spec import DYNAMIC, SPEC_FIELD, STREAM_FIRST_ITEM, STREAMING, ArgRef, TaskSpec

LEASE_IDLE_MS = 2  # a leased worker gives its resources back after this long without work
# A leased worker reads up to this many tasks at once while its tasks stay short (under
# SHORT_TASK_S each), and delivers their results together: one read, one result script, one
# XACK and one XDEL for the lot. Longer tasks are read one at a time, so no worker sits on
# queued work that an idle one could start.
LEASE_BATCH = 16
SHORT_TASK_S = 0.001
# While its tasks stay under this long, a leased worker sends the read of its next batch
# before it runs the current one (without BLOCK: it takes only tasks already queued), so the
# read's round trip overlaps the run: 1-5 ms tasks spent ~0.6 ms between tasks on a busy
# 2-core host, most of it in that read. A task read ahead waits at most this long behind
# the one running; longer tasks are not read ahead, so none waits behind a long one.
READ_AHEAD_MAX_S = 0.01
_READ_BROKE = -1  # the read sent ahead failed: its reply, and maybe tasks it took, are lost


# a finished task's results, waiting for delivery: (spec, records, stream, entry id, group)
Delivery = tuple[TaskSpec, list[bytes], str, bytes, str]


class ResultDelivery:
    """Delivers finished tasks' results: one result script, then XACK and XDEL of the entries,
    on the command stream in that order (so the ACK never lands before the results).

    Inside ``batch()``, results are held back and delivered together when it ends, or
    earlier by ``flush()`` (before any task of the batch blocks: it may wait for one of them).
    """

    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self._batching = False
        self._held: list[Delivery] = []
        self._lock = threading.Lock()  # the held results (an actor's threads deliver too)

    @contextmanager
    def batch(self, enabled: bool = True,
              extra: tuple[Any, Callable[[Any], None]] | None = None) -> Iterator[None]:
        """Hold results back while the block runs (if ``enabled``), then deliver them with
        ``extra`` (as for ``deliver``)."""
        self._batching = enabled
        try:
            yield
        finally:
            self._batching = False
            if enabled:
                self.flush(extra)

    def hold_back(
        self, spec: TaskSpec, records: list[bytes], stream: str, entry_id: bytes, group: str
    ) -> bool:
        """Keep a finished task's results for the batch's one delivery; False outside a batch."""
        if not self._batching:
            return False
        if self.core.events is not None:
            self.core.events.ended(spec, records)
        with self._lock:
            self._held.append((spec, records, stream, entry_id, group))
        return True

    def flush(self, extra: tuple[Any, Callable[[Any], None]] | None = None) -> None:
        """Deliver the results held back so far. ``extra`` as for ``deliver``."""
        with self._lock:
            held, self._held = self._held, []
        if held:
            self._send(held, extra)

    def deliver(
        self,
        spec: TaskSpec,
        records: list[bytes],
        stream: str,
        entry_id: bytes,
        group: str,
        extra: tuple[Any, Callable[[Any], None]] | None = None,
    ) -> None:
        """Store the results, wake the owner and waiters, and ACK the entry, without waiting.
        ``extra`` adds one more command whose reply it receives."""
        if self.core.events is not None:
            self.core.events.ended(spec, records)
        self._send([(spec, records, stream, entry_id, group)], extra)

    def _send(self, batch: list[Delivery], extra: tuple[Any, Callable[[Any], None]] | None) -> None:
        """One result script for every result of ``batch``, then one XACK and one XDEL per
        stream (an entry without a stream, such as an actor restart's, has nothing to ACK)."""
        items = [
            (oid, record, spec.owner)
            for spec, records, _, _, _ in batch
            for oid, record in zip(spec.return_ids(), records, strict=True)
        ]
        stores = self.core.gcs.store_objects_commands(items)
        acks: list[Any] = []  # after the results are stored (on a Redis Cluster, once they are)
        by_stream: dict[tuple[str, str], list[bytes]] = {}
        for _, _, stream, entry_id, group in batch:
            if stream:
                by_stream.setdefault((stream, group), []).append(entry_id)
        for (stream, group), ids in by_stream.items():
            acks.append(("XACK", stream, group, *ids))
            acks.append(("XDEL", stream, *ids))
        callback = None
        if extra is not None:
            command, on_reply = extra
            acks.append(command)
            callback = lambda replies: on_reply(replies[-1])  # noqa: E731
        spread.send(self.core.commands, self.core.gcs, stores, callback, then=acks)


class TaskExecutor:
    """Loads functions, resolves arguments, runs tasks and delivers their results."""

    def __init__(self, core: CoreWorker, conn: Connection, redis_url: str) -> None:
        self.core = core
        self.conn = conn
        self.redis_url = redis_url
        self._functions: dict[str, Any] = {}
        self._job_namespaces: dict[str, str] = {}
        self._job_logging: dict[str, str] = {}  # job -> its LoggingConfig (JSON) or ""
        self._send_lock = threading.Lock()
        self.output: OutputCapture | None = None  # set once stdout/stderr are captured
        self._lease_client: Any = None
        self._ahead_client: Any = None
        self._mailbox_client: Any = None  # made by open_connections, taken by an actor
        # the lease being run: (its stream, the connection for reads sent ahead), the tasks it
        # took and has not started, and the COUNT of the read sent ahead whose reply is not
        # read yet (0: none; _READ_BROKE: it failed); under _lease_lock, as a task's threads
        # blocking in get give the unstarted back (give_back_unstarted)
        self._lease_lock = threading.Lock()
        self._lease: tuple[str, Any] | None = None
        self._unstarted: deque[tuple[bytes, Any]] = deque()
        self._ahead = 0
        # spread tag -> (a client on its master, a connection there for reads sent ahead)
        self._lease_clients: dict[int | None, tuple[Any, Any]] = {}
        self.results = ResultDelivery(core)
        self.actor_id: str | None = None  # set once this worker became an actor
        self.actor_name = ""
        self.actor_restarted = False  # this actor runs again after its process or node died
        self.cancelled_tasks: set[bytes] = set()  # calls of this actor cancelled while queued/running
        # Task cancels by SIGINT (plain tasks): the handler interrupts only the task named in
        # `interruptible` (set inside run()'s try, so the KeyboardInterrupt is always caught
        # there); a cancel that arrives before its task starts (it was on its way to us) is
        # kept in `cancel_before_start` and honoured when the task does start.
        self.interruptible: str | None = None
        self.cancel_before_start: str | None = None

    def send(self, msg: protocol.Message) -> None:
        with self._send_lock:
            self.conn.send(protocol.encode(msg))

    def is_cancelled(self, task_id: bytes) -> bool:
        """Whether the task (or actor call) running here was cancelled."""
        if task_id in self.cancelled_tasks:
            return True
        if self.core.gcs.cancel_flags(task_id.hex()) is None:
            return False
        self.cancelled_tasks.add(task_id)  # so the call's result is reported as cancelled
        return True

    def serve(self) -> None:
        self.send(protocol.Ready(os.getpid()))
        while True:
            self.core.commands.push()  # what we buffered goes out before we wait
            try:
                msg = protocol.decode(self.conn.recv())
            except (EOFError, OSError):
                return
            match msg:
                case protocol.Exit():
                    return
                case protocol.BecomeActor(stream, entry_id, spec_bytes, restart):
                    from rayr.worker.actor_runtime import ActorRuntime  # only actor workers need it

                    ActorRuntime(self, TaskSpec.decode(spec_bytes), stream, entry_id, restart).run()
                    return
                case protocol.RunTasks(items, lease):
                    done = 0
                    for stream, entry_id, spec_bytes in items:
                        self.execute(stream, entry_id, TaskSpec.decode(spec_bytes))
                        done += 1
                    if lease:
                        done += self.run_lease(items[-1][0])
                    self.send(protocol.Done(done))
                case _:
                    raise ValueError(f"a worker cannot take {msg!r} from its raylet")

    def run_lease(self, stream: str) -> int:
        """Keep taking tasks of this shape straight from Redis while there are any.

        The raylet leased us its resources for one task of the stream's shape; as long as
        more such tasks wait, running them back to back needs no raylet hop per task. The
        lease ends (and the resources go back) when the stream stays empty for a moment, or
        after ``worker_lease_max_s``. Tasks taken but not started go back to the stream when
        the running one blocks in ``get`` (``give_back_unstarted``).
        """
        tag = self.core.keys.tag_of(stream)
        client, ahead_client = self._lease_clients_for(tag)
        consumer = f"{self.core.node_hex}.{self.core.worker_hex}"
        ran = 0
        count, hold, read_ahead = 1, False, False
        ends = time.monotonic() + self.core.settings.worker_lease_max_s  # a raylet hop per second
        with self._lease_lock:
            self._lease = (stream, ahead_client)
        try:
            while True:
                self.core.commands.push()  # our results go out before we wait for more work
                try:
                    with self._lease_lock:
                        reply = self._take_ahead()
                    if not reply:  # nothing read ahead (or nothing was queued then): wait for work
                        if time.monotonic() >= ends:
                            return ran
                        reply = read_group(client, TASK_GROUP, consumer, {stream: ">"}, count, LEASE_IDLE_MS)
                except REDIS_DOWN_ERRORS:  # e.g. Redis restarting: end the lease, the raylet goes on
                    ahead_client.connection.disconnect()  # whatever was on the wire is void
                    with self._lease_lock:
                        self._ahead = 0  # what it took is pending under us: run below
                    return ran + self._run_own_pending(client, stream, consumer)
                entries = reply[0][1] if reply else []
                if not entries:
                    return ran
                with self._lease_lock:
                    self._unstarted.extend(entries)
                    # only after a full read: more may be queued (a sync caller's next is not)
                    if read_ahead and len(entries) >= count and time.monotonic() < ends:
                        self._ahead = self._read_ahead(ahead_client, consumer, stream, count)
                started = time.perf_counter()
                done = 0
                with self.results.batch(hold and len(entries) > 1):
                    while True:
                        with self._lease_lock:
                            if not self._unstarted:
                                break
                            entry_id, fields = self._unstarted.popleft()
                        if fields and SPEC_FIELD in fields:
                            self.execute(stream, entry_id, TaskSpec.decode(fields[SPEC_FIELD]))
                            ran += 1
                        done += 1
                per_task = (time.perf_counter() - started) / max(done, 1)
                if per_task < SHORT_TASK_S:
                    count, hold, read_ahead = min(2 * count, LEASE_BATCH), True, True
                else:
                    count, hold, read_ahead = 1, False, per_task < READ_AHEAD_MAX_S
        finally:
            with self._lease_lock:
                self._lease = None

    def _take_ahead(self) -> Any:
        """(Under _lease_lock.) The reply of the read sent ahead, if one is on the wire.

        Raises:
            redis.ConnectionError: that read failed (its tasks may be pending under us).
        """
        ahead, self._ahead = self._ahead, 0
        if ahead == _READ_BROKE:
            raise redis.ConnectionError("the read sent ahead of a task failed")
        if not ahead or self._lease is None:
            return None
        ahead_client = self._lease[1]
        try:
            return read_reply(ahead_client.connection)
        except REDIS_DOWN_ERRORS:
            self._ahead = _READ_BROKE  # for the lease loop, if we are not it
            raise

    def give_back_unstarted(self) -> None:
        """The running task blocked in ``get``: the tasks this lease took and has not started
        (the rest of a batch, what the read sent ahead took) go back to their stream, where
        another worker can take them; one of them may be what the task waits for."""
        with self._lease_lock:
            if self._lease is None:
                return
            stream = self._lease[0]
            taken = list(self._unstarted)
            self._unstarted.clear()
            try:
                reply = self._take_ahead()
            except REDIS_DOWN_ERRORS:
                reply = None  # the lease loop runs what that read took once the task is done
            if reply:
                taken += reply[0][1]
        if not taken:
            return
        try:
            self.core.gcs.give_back_tasks(stream, [entry_id for entry_id, _ in taken])
        except REDIS_DOWN_ERRORS:  # kept: they run here once the blocked task is done
            with self._lease_lock:
                self._unstarted.extendleft(reversed(taken))

    def open_connections(self) -> None:
        """Connect now, while nothing waits on this worker, what a first task or an actor
        would otherwise connect on its critical path: the tables' client (the job, the
        function), a lease's reads and an actor's mailbox reads. A new connection's first
        command costs ~1 ms more than a warm one, several under load."""
        self._lease_client = self._new_lease_client()
        self._mailbox_client = self._new_mailbox_client()
        for client in (self.core.gcs.r, self._lease_client, self._mailbox_client):
            pool = client.connection_pool
            try:
                pool.release(pool.get_connection())  # connected (and authenticated): no command needed
            except Exception:  # e.g. Redis away: each is connected when first used, as before
                return

    def take_mailbox_client(self) -> Any:
        """A client for an actor's mailbox reads (with redis-py's retries, unlike a lease's)."""
        client, self._mailbox_client = self._mailbox_client, None
        return client if client is not None else self._new_mailbox_client()

    def _new_lease_client(self) -> Any:
        return self._named_client("lease", retry=no_retry())

    def _new_mailbox_client(self) -> Any:
        return self._named_client("mailbox")

    def _named_client(self, role: str, **kwargs: Any) -> Any:
        """A client whose connections are named ``rayr-<role>-<worker>`` (CLIENT LIST)."""
        name = f"rayr-{role}-{self.core.worker_hex}"
        return connect_as(self.redis_url, self.core.settings, client_name=name, **kwargs)

    def _lease_clients_for(self, tag: int | None) -> tuple[Any, Any]:
        """(a client for the lease's blocking reads, one connection of our own for the reads
        sent ahead), both on the master of spread tag ``tag`` on a Redis Cluster."""
        clients = self._lease_clients.get(tag)
        if clients is None:
            if self._lease_client is None:
                self._lease_client = self._new_lease_client()
            if self._ahead_client is None:
                self._ahead_client = self._named_client("ahead", retry=no_retry(),
                                                        single_connection_client=True)
            if tag is None:
                clients = (self._lease_client, self._ahead_client)
            else:
                clients = (on_tag(self._lease_client, self.core.keys, tag),
                           on_tag(self._ahead_client, self.core.keys, tag, single_connection=True))
            self._lease_clients[tag] = clients
        return clients

    @staticmethod
    def _read_ahead(ahead_client: Any, consumer: str, stream: str, count: int) -> int:
        """Send a read of up to ``count`` queued tasks without waiting for its reply; its COUNT
        (or _READ_BROKE when the send failed: Redis may have run it all the same)."""
        try:
            command = read_command(TASK_GROUP, consumer, {stream: ">"}, count)
            ahead_client.connection.send_packed_command([command])
        except REDIS_DOWN_ERRORS:
            return _READ_BROKE
        return count

    def _run_own_pending(self, client: Any, stream: str, consumer: str) -> int:
        """After a failed lease read: run what the read may have taken without its reply
        reaching us. Such entries are pending under our consumer, where nobody else looks."""
        ran = 0

        def read_own_pending() -> Any:
            return client.xreadgroup(TASK_GROUP, consumer, {stream: "0"}, count=LEASE_BATCH)

        try:
            for _ in range(100):
                # our ACKs land first (the command stream resends them), so what is still
                # pending afterwards is what we never ran
                self.core.commands.flush(timeout=RECONNECT_S)
                reply = until_reachable(read_own_pending, "recovering a lease's tasks")
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                for entry_id, fields in entries:
                    if fields and SPEC_FIELD in fields:
                        self.execute(stream, entry_id, TaskSpec.decode(fields[SPEC_FIELD]))
                        ran += 1
                    else:  # deleted meanwhile (cancelled): only its pending slot is left
                        spread.stream_for(self.core.commands, self.core.gcs, stream).send(
                            [("XACK", stream, TASK_GROUP, entry_id)])
        except REDIS_DOWN_ERRORS:  # gone for good: the raylet recovers our consumer if we die
            pass
        return ran

    # ------------------------------------------------------------------ run
    def execute(self, stream: str, entry_id: bytes, spec: TaskSpec) -> None:
        received = time.time() if self.core.events is not None else None  # for its task events
        self.enter_job(spec)
        self.attribute_output(spec.name)
        self.core.set_current_task(spec.task_id, spec.resources, spec)
        try:
            records = self.run(spec, None, received)
        finally:
            self.core.set_current_task(None)
        if not self.results.hold_back(spec, records, stream, entry_id, TASK_GROUP):
            self.results.deliver(spec, records, stream, entry_id, TASK_GROUP)

    def attribute_output(self, name: str) -> None:
        """Prefix what is printed from now on with ``name`` (a task, or an actor's class)."""
        if self.output is not None:
            self.output.set_source(self.core.job_id.hex(), name)

    def enter_job(self, spec: TaskSpec) -> None:
        """Own what this task creates inside the task's job, in the job's namespace."""
        if spec.job_hex not in self._job_namespaces:
            self._join_job(spec.job_hex)
        if spec.job_hex != self.core.job_id.hex():
            self.core.job_id = JobID(bytes.fromhex(spec.job_hex))
            self.core.namespace = self._job_namespaces[spec.job_hex]
            if self._job_logging.get(spec.job_hex) or log_config.installed():
                log_config.apply(self._job_logging.get(spec.job_hex), self._log_context)

    def run(self, spec: TaskSpec, fn: Any, received: float | None = None) -> list[bytes]:
        """Run ``fn`` (the spec's function when None) on the spec's arguments; result records.

        A cancellation (KeyboardInterrupt raised by the SIGINT handler) yields
        TaskCancelledError records and, if asked, cancels the tasks this one submitted.
        ``received``: when the task reached this worker (default: now), for its events.
        """
        events = self.core.events
        if events is not None:
            events.started(spec, received or time.time())
        try:
            if self.actor_id is None:
                self.interruptible = task_hex = spec.task_id.hex()
                if self.cancel_before_start == task_hex:
                    raise KeyboardInterrupt
            return self._run(spec, fn)
        except KeyboardInterrupt:
            self.interruptible = None
            flags = self.core.gcs.cancel_flags(spec.task_id.hex()) or ""
            if "recursive" in flags:
                self.core.cancel_children(spec.task_id)
            ran = self.cancel_before_start != spec.task_id.hex()
            return [self.cancelled_record(spec, ran)] * max(spec.num_returns, 1)
        finally:
            self.interruptible = None
            self.core.forget_children(spec.task_id)
            if self.core.store is not None:
                self.core.store.trim_mappings()

    def cancelled_record(self, spec: TaskSpec, ran: bool = False) -> bytes:
        """The record of a cancelled task: TaskCancelledError, and, as in Ray, a RayTaskError
        too (both classes at once) when it was interrupted while running."""
        err = TaskCancelledError(f"Task {spec.name} ({spec.task_id.hex()}) was cancelled.",
                                 task_id=spec.task_id.hex())
        if not ran:
            return rec.error_record(serialization.dumps(err))
        wrapped = RayTaskError(spec.function_name, f"{type(err).__name__}: {err}", err, os.getpid(),
                               self.core.node_hex)
        return rec.error_record(serialization.dumps(wrapped))

    def _run(self, spec: TaskSpec, fn: Any) -> list[bytes]:
        n = max(spec.num_returns, 1)
        try:
            if fn is None:
                fn = self.load_function(spec)
            args, kwargs, failed_dep = self.arguments(spec)
        except Exception as err:
            return [self.error_record(spec, err)] * n
        if failed_dep is not None:
            return [failed_dep] * n  # a failed argument fails this task with the same error
        attempts = 0
        while True:
            try:
                result = fn(*args, **kwargs)
                if spec.num_returns == STREAMING:
                    return [self.stream_items(spec, result)]
                if spec.num_returns == DYNAMIC:
                    return [self.dynamic_items(spec, result)]
                return self.result_records(spec, result)
            except Exception as err:
                if self._should_retry(spec, err, attempts):
                    attempts += 1
                    continue
                return [self.error_record(spec, err)] * n

    def _should_retry(self, spec: TaskSpec, err: Exception, attempts: int) -> bool:
        if spec.retry_exceptions is False:
            return False
        if spec.max_retries != -1 and spec.attempt + attempts >= spec.max_retries:
            return False
        if spec.retry_exceptions is True:
            return True
        allowed = tuple(pickle.loads(spec.retry_exceptions))
        return isinstance(err, allowed)

    def load_function(self, spec: TaskSpec) -> Any:
        fn = self._functions.get(spec.function_key)
        if fn is None:
            # a task taken just before Redis went away waits for it rather than failing
            data = until_reachable(lambda: self.core.gcs.fetch_function(spec.function_key),
                                   "loading a task's function")
            if data is None:
                raise RuntimeError(
                    f"function {spec.function_name} ({spec.function_key}) is not in the function "
                    "table; its job may have ended"
                )
            fn = serialization.unpickle(data)
            self._functions[spec.function_key] = fn
        return fn

    def _log_context(self) -> dict[str, str | None]:
        """Who a log record comes from (a job's LoggingConfig shows it)."""
        task = self.core.current_task_id
        return {"job_id": self.core.job_id.hex(), "worker_id": self.core.worker_hex,
                "node_id": self.core.node_hex, "actor_id": self.actor_id,
                "task_id": task.hex() if task else None}

    def _join_job(self, job_hex: str) -> None:
        """Make the driver's import paths importable here, as Ray does for a job's workers."""
        info = until_reachable(lambda: self.core.gcs.get_job(job_hex), "joining a task's job")
        for path in reversed(json.loads(info.get("sys_path", "[]"))):
            if path not in sys.path and os.path.isdir(path):
                sys.path.insert(1, path)
        self._job_namespaces[job_hex] = info.get("namespace", "")
        self._job_logging[job_hex] = info.get("logging_config", "")

    def arguments(self, spec: TaskSpec) -> tuple[tuple, dict, bytes | None]:
        """(args, kwargs, None), or ((), {}, error record) when a dependency failed."""
        core = self.core
        if spec.args_object is not None:
            (record,) = core.gcs.get_objects([spec.args_object.hex()])
            if record is None and core.gcs.spread_only:
                # on a Redis Cluster an actor call's arguments' record went on another stream
                # than the call (the caller's tag, not the actor's): it may be on its way
                held_args: ObjectRef[Any] = ObjectRef(spec.args_object)
                core.wait_ready([spec.args_object], 1, None)
                record = core.ownership.records.get(spec.args_object)
                del held_args
            if record is None:
                raise RuntimeError("the task's arguments are missing from the object table")
            call_args, call_kwargs = serialization.deserialize(core.stored_view(spec.args_object, record))
        else:
            call_args, call_kwargs = serialization.deserialize(spec.args)
        if not spec.ref_args:
            return call_args, call_kwargs, None
        values: list[Any] = []
        missing = [o for o in spec.ref_args if o not in spec.dep_records]
        held: list[ObjectRef[Any]] = [ObjectRef(o) for o in missing]  # keep them counted while we read them
        if missing:
            core.wait_ready(missing, len(set(missing)), None)
        for oid in spec.ref_args:
            record = spec.dep_records.get(oid) or core.record_of(oid)
            assert record is not None
            if record[0] == rec.ERROR:
                return (), {}, record
            if record[0] == rec.STORED:  # if lost, the submitter (usually its owner) rebuilds it
                values.append(core.value_recovering(oid, spec.owner))
            else:
                values.append(core.value_of(oid, record))
        del held

        def fill(v: Any) -> Any:
            return values[v.slot] if type(v) is ArgRef else v

        return tuple(fill(a) for a in call_args), {k: fill(v) for k, v in call_kwargs.items()}, None

    def stream_items(self, spec: TaskSpec, items: Any) -> bytes:
        """Deliver each item as it is produced; returns the record of the item count."""
        count = 0
        try:
            for value in items:
                self.store_item(spec, count, value)
                count += 1
        except Exception as err:
            self.store_item(spec, count, None, self.error_record(spec, err))
            count += 1
        return rec.value_record(serialization.dumps(count))

    def dynamic_items(self, spec: TaskSpec, items: Any) -> bytes:
        """``num_returns="dynamic"``: store each item as the generator yields it (a stream's
        item, owned by the caller), then return 1's record: a DynamicObjectRefGenerator that
        holds refs to them all, so they live as long as it does. An exception from the
        generator fails return 1 (the items stored so far are freed with the job)."""
        if not inspect.isgenerator(items) and not isinstance(items, Iterable):
            raise TypeError(f"{spec.function_name} has num_returns='dynamic' but returned "
                            f"{type(items).__name__}, not a generator or iterable")
        count = 0
        for value in items:
            self.store_item(spec, count, value)
            count += 1
        first = spec.task_id
        refs: list[ObjectRef[Any]] = [
            ObjectRef(first + (STREAM_FIRST_ITEM + i).to_bytes(4, "big"), spec.owner) for i in range(count)
        ]
        frame = serialization.serialize(DynamicObjectRefGenerator(refs))
        return self.core.make_record(spec.return_ids()[0], frame, spec.owner)

    def store_item(self, spec: TaskSpec, index: int, value: Any, record: bytes | None = None) -> None:
        """Store one streamed item and announce it to the owner."""
        oid = spec.task_id + (STREAM_FIRST_ITEM + index).to_bytes(4, "big")
        if record is None:
            record = self.core.make_record(oid, serialization.serialize(value), spec.owner)
        core = self.core
        spread.send(core.commands, core.gcs, core.gcs.store_objects_commands([(oid, record, spec.owner)]))

    def result_records(self, spec: TaskSpec, result: Any) -> list[bytes]:
        if spec.num_returns <= 1:
            values = [result if spec.num_returns == 1 else None]
        else:
            if inspect.isgenerator(result):  # a generator declared with a fixed num_returns
                result = list(result)
            if not isinstance(result, tuple | list) or len(result) != spec.num_returns:
                got = len(result) if isinstance(result, tuple | list) else type(result).__name__
                raise ValueError(
                    f"{spec.function_name} was declared with num_returns={spec.num_returns} "
                    f"but returned {got!r} values; return a tuple of that length"
                )
            values = list(result)
        out = []
        for oid, value in zip(spec.return_ids(), values, strict=True):
            try:
                frame = serialization.serialize(value)
            except Exception as err:
                raise TypeError(
                    f"could not serialize the return value of {spec.function_name}: {err}"
                ) from err
            out.append(self.core.make_record(oid, frame, spec.owner))
        return out

    def error_record(self, spec: TaskSpec, err: BaseException) -> bytes:
        tb = traceback.format_exc()
        wrapped = RayTaskError(spec.function_name, tb, err, os.getpid(), self.core.node_hex)
        try:
            frame = serialization.dumps(wrapped)
        except Exception:  # the exception itself does not pickle: keep its text only
            wrapped.cause = None
            frame = serialization.dumps(wrapped)
        return rec.error_record(frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rayr.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--store-backend", required=True)
    parser.add_argument("--store-namespace", required=True)
    parser.add_argument("--store-options-json", default="{}")
    parser.add_argument("--settings-json", required=True)
    parser.add_argument("--cancel-file", required=True, help="where the raylet names a task to cancel")
    parser.add_argument("--runtime-env", default="", help="hash of the runtime env this worker runs in")
    parser.add_argument("--gpu-ids", default="", help="the GPU ids this worker's tasks were given")
    opts = parser.parse_args(argv)
    if opts.gpu_ids:
        # ids the node took from CUDA_VISIBLE_DEVICES are reported as strings, as in Ray
        named = accelerators.VISIBLE_DEVICES in os.environ
        ids = opts.gpu_ids.split(",")
        context.state.gpu_ids = ids if named else [int(i) for i in ids]
        os.environ[accelerators.VISIBLE_DEVICES] = opts.gpu_ids  # before any task imports CUDA
    settings = child_settings(opts.settings_json)  # the password comes in the environment
    conn = Connection(opts.fd)
    client = connect_as(opts.redis_url, settings)
    blocking = connect_as(opts.redis_url, settings, retry=no_retry())  # see core/inbox.py
    gcs = GcsClient(client, Keys(settings.cluster_name))
    store = open_backend(opts.store_backend, opts.store_namespace, json.loads(opts.store_options_json))
    executor: TaskExecutor | None = None

    def on_blocked(blocked: bool) -> None:
        if executor is None:
            return
        if blocked:
            executor.results.flush()
            if threading.current_thread() is threading.main_thread():
                # the running task itself waits (a thread it left behind does not hold up
                # the lease): what its lease holds may be what it waits for
                executor.give_back_unstarted()
        if core.current_task_id is not None and executor.actor_id is None:
            executor.send(protocol.Blocked(blocked))

    core = CoreWorker(
        gcs=gcs,
        blocking_redis=blocking,
        commands=command_stream.for_cluster(opts.redis_url, settings),
        settings=settings,
        node_hex=opts.node_id,
        store=store,
        job_id=JobID.from_int(0),
        worker_hex=opts.worker_id,
        on_blocked=on_blocked,
    )
    core.envs.set_parent(opts.runtime_env)  # tasks it submits inherit its env
    hook = core.envs.parent().get("worker_process_setup_hook") if opts.runtime_env else None
    if hook:
        try:
            run_setup_hook(hook)
        except BaseException:  # the raylet fails the env's tasks with this log's tail
            traceback.print_exc()
            print(f"The runtime env's worker_process_setup_hook {hook[:60]!r} failed; this worker "
                  "exits before taking any task.", file=sys.stderr, flush=True)
            core.shutdown()
            sys.exit(1)
    context.state.core = core
    context.state.redis_url = opts.redis_url  # the password comes in the environment, not here
    executor = TaskExecutor(core, conn, opts.redis_url)
    context.state.executor = executor
    executor.output = OutputCapture(
        lambda job, payload: gcs.r.publish(gcs.keys.job_logs(job), encode(opts.node_id, payload)),
    )
    executor.output.start()

    def on_sigint(signum: int, frame: Any) -> None:
        # The raylet writes the task to cancel into our cancel file, then sends SIGINT. A stray
        # signal (the task already ended, or it was another) is ignored. Only raw os calls
        # here: the handler may interrupt this thread inside a lock (Redis's connection pool,
        # a buffered file), and taking it again would deadlock the worker.
        if executor.actor_id is not None:
            return
        try:
            fd = os.open(cancel_file, os.O_RDONLY)
            try:
                wanted = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
        except OSError:
            return
        if wanted == executor.interruptible:
            raise KeyboardInterrupt
        executor.cancel_before_start = wanted  # not started yet, or already finished

    cancel_file = opts.cancel_file

    signal.signal(signal.SIGINT, on_sigint)
    executor.open_connections()
    try:
        executor.serve()
    finally:
        context.state.core = context.state.executor = None
        core.shutdown()


if __name__ == "__main__":
    main()
