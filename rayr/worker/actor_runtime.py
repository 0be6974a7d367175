"""An actor's worker process: constructs the instance, then serves its mailbox stream.

The actor reads its calls straight from Redis (``XREADGROUP`` on its mailbox), with no
raylet hop per call. A normal actor runs calls one at a time in stream order, so calls from
one caller run in submission order; ``max_concurrency > 1`` runs them on a thread pool, and
an actor with ``async def`` methods interleaves them on one event loop. ``concurrency_groups``
give the methods that name a group (``@method(concurrency_group=...)``) a pool or a limit of
their own.

Calls stay in the mailbox's pending list until their results are stored, so a restarted
actor finds the calls its previous incarnation had read (each incarnation reads as its own
consumer, and the new one claims the others' entries): the first ``max_concurrency`` of them
may have been running and are retried within ``max_task_retries``; the rest had not started
and simply run. An incarnation that finds the actor hash naming another worker (its node was
declared dead while it lived on) exits; the live one takes over what it left pending.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rayr import protocol, serialization
from rayr.exceptions import ActorDiedError, ActorExitRequest, RayTaskError
from rayr.gcs import records as rec
from rayr.gcs.client import REDIS_DOWN_ERRORS, on_tag
from rayr.gcs.stream_read import read_group
from rayr.keys import ACTOR_GROUP, TASK_GROUP, spread_tag
from rayr.task_spec import DYNAMIC, READY_METHOD, SPEC_FIELD, STREAMING, TaskSpec

if TYPE_CHECKING:
    from rayr.worker.executor import TaskExecutor

log = logging.getLogger("rayr.actor")
READ_BATCH = 64
# a sync actor running a batch of calls reads its control stream before the next call once the
# calls so far took this long, so a cancel of a call queued behind a slow one is not missed
CONTROL_POLL_S = 0.005
INCARNATION_CHECK_S = 2.0  # how often an actor checks it is still the actor's live incarnation
# calls an earlier incarnation took this long ago and still holds are taken over (it is dead,
# or a zombie that exits within INCARNATION_CHECK_S)
STRAGGLER_IDLE_MS = 3000
STARTED_KEPT = 100_000  # calls an actor remembers having started (16-byte ids: ~10 MB at most)
EXIT_WAIT_S = 30.0  # how long the serve loop waits for exit_actor() to finish on another thread


def _ready() -> bool:
    return True


class ActorRuntime:
    """One actor instance and the loop that feeds it calls."""

    def __init__(
        self, executor: TaskExecutor, spec: TaskSpec, stream: str, entry_id: bytes, restart: bool
    ) -> None:
        self.executor = executor
        self.core = executor.core
        self.gcs = self.core.gcs
        self.spec = spec
        self.actor_id = spec.actor_id
        self.creation_stream = stream
        self.creation_entry = entry_id
        self.restart = restart
        options = spec.actor_options or {}
        self.max_concurrency = int(options.get("max_concurrency", 1))
        # Ray's concurrency groups: each its own threads (or its own limit on the event loop);
        # a method names its group with @method(concurrency_group=...), the rest share the default
        self.concurrency_groups: dict[str, int] = dict(options.get("concurrency_groups") or {})
        self.max_task_retries = int(options.get("max_task_retries", 0))
        self.is_async = bool(options.get("is_async", False))
        self.mailbox = self.gcs.keys.actor_mailbox(self.actor_id)
        self.control = self.gcs.keys.actor_control(self.actor_id)
        # each incarnation reads as a consumer of its own, so what an earlier one took and
        # never finished is told apart from what this one is running (see _take_over)
        self.consumer = f"actor-{self.core.worker_hex}"
        # the calls this incarnation has started (bounded): a failover may lose our read of a
        # call (replication is asynchronous) and hand it to us again; it must not run twice
        self._started: set[bytes] = set()
        self._started_order: deque[bytes] = deque()
        # calls running on the event loop, by task id, so a cancellation can reach them
        self._async_calls: dict[bytes, Any] = {}
        self.instance: Any = None
        self._exiting = threading.Event()  # exit_actor() was called: the serve loop stops
        self._exited = threading.Event()  # ... and has failed what was queued: the process may end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._group_pools: dict[str, ThreadPoolExecutor] = {}
        self._group_semaphores: dict[str, asyncio.Semaphore] = {}

    # ------------------------------------------------------------- creation
    def run(self) -> None:
        if not self._construct():
            return
        self.executor.actor_id = self.actor_id
        threading.Thread(target=self._end_with_the_raylet, name="rayr-raylet-watch", daemon=True).start()
        if self.is_async:
            self._start_loop()
        elif self.max_concurrency > 1 or self.concurrency_groups:
            # with groups even a one-thread default runs off the read loop, so other groups'
            # calls are taken while one of the default group runs
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rayr-actor")
            self._group_pools = {name: ThreadPoolExecutor(size, thread_name_prefix=f"rayr-actor-{name}")
                                 for name, size in self.concurrency_groups.items()}
        self._serve()

    def _end_with_the_raylet(self) -> None:
        """Exit the moment our raylet dies. Its socket closes as it dies, before the kernel's
        death signal reaches us by way of the zygote; an actor that served a call in between
        would answer from a dead node while the cluster restarts it elsewhere."""
        while True:
            try:
                self.executor.conn.recv()  # the raylet sends an actor nothing after its creation
            except (EOFError, OSError):
                os._exit(1)

    def _construct(self) -> bool:
        spec = self.spec
        executor = self.executor
        executor.enter_job(spec)
        info = self.gcs.actor_info(self.actor_id)
        if info.get("state", "DEAD") == "DEAD":
            # killed before it started: finish the creation task and serve as a plain worker
            executor.results.deliver(spec, [rec.value_record(serialization.dumps(None))],
                                     self.creation_stream, self.creation_entry, TASK_GROUP)
            executor.send(protocol.ActorFailed())
            return False
        self.executor.actor_id = self.actor_id
        self.executor.actor_name = info.get("name", "")
        self.executor.actor_restarted = int(info.get("restarts", 0) or 0) > 0
        # what its methods start follows the group it was created in
        self.core.submitter.actor_group = (spec.placement_group, spec.capture_children)
        executor.attribute_output(spec.function_name.split(".")[0])  # the class, as Ray prefixes
        self.core.set_current_task(spec.task_id, spec.resources, spec)
        holder: list[Any] = []

        def construct(*args: Any, **kwargs: Any) -> None:
            holder.append(executor.load_function(spec)(*args, **kwargs))

        records = executor.run(spec, construct)
        self.core.set_current_task(None)
        if records[0][0] == rec.ERROR or not holder:
            cause = serialization.deserialize(memoryview(records[0])[1:])
            text = str(cause) if isinstance(cause, RayTaskError) else repr(cause)
            self._die(f"The actor died because of an error raised in its creation task:\n{text}")
            if not self.restart:
                executor.results.deliver(spec, records, self.creation_stream, self.creation_entry, TASK_GROUP)
            executor.send(protocol.ActorFailed())
            return False
        self.instance = holder[0]
        alive = self.gcs.set_actor_state(
            self.actor_id,
            "ALIVE",
            node=self.core.node_hex,
            pid=os.getpid(),
            worker=self.core.worker_hex,
            creation_spec=spec.encode(),
        )
        if not alive:  # killed while it was being constructed
            if not self.restart:
                executor.results.deliver(spec, records, self.creation_stream, self.creation_entry, TASK_GROUP)
            executor.send(protocol.ActorFailed())
            self.core.commands.flush()
            os._exit(0)
        if not self.restart:
            executor.results.deliver(spec, records, self.creation_stream, self.creation_entry, TASK_GROUP)
        elif self.creation_stream:  # a restart queued by the monitor: the owner has its result
            client = self.gcs.stream_client(self.creation_stream)
            client.xack(self.creation_stream, TASK_GROUP, self.creation_entry)
            client.xdel(self.creation_stream, self.creation_entry)
        executor.send(protocol.ActorReady(self.actor_id))
        return True

    def _die(self, cause: str) -> None:
        """Mark the actor DEAD and fail every call left in its mailbox."""
        specs = self.gcs.mark_actor_dead(self.actor_id, cause)
        self.gcs.fail_tasks(specs, ActorDiedError(cause, self.actor_id))

    # -------------------------------------------------------------- serving
    def _serve(self) -> None:
        # the mailbox's master (on a Redis Cluster, that of the actor's spread tag)
        client: Any = on_tag(self.executor.take_mailbox_client(), self.gcs.keys, spread_tag(self.actor_id))
        if self.restart:
            self._take_over(client, min_idle_ms=0)
        streams = {self.mailbox: ">", self.control: ">"}
        next_check = time.monotonic() + INCARNATION_CHECK_S
        while not self._exiting.is_set():
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + INCARNATION_CHECK_S
                    self._check_incarnation(client)
                self.core.commands.push()  # results of the last batch: out before we wait
                reply = read_group(client, ACTOR_GROUP, self.consumer, streams, READ_BATCH, 1000)
            except REDIS_DOWN_ERRORS:  # e.g. Redis restarting: its mailbox comes back with it
                if self._exiting.is_set():
                    break
                time.sleep(0.2)
                continue
            except Exception:
                if self._exiting.is_set():
                    break  # exit_actor() deleted the mailbox we read
                if self.gcs.actor_info(self.actor_id).get("state", "DEAD") == "DEAD":
                    os._exit(0)  # killed: its mailbox is gone and no call can arrive
                log.exception("reading the mailbox of actor %s failed; retrying", self.actor_id)
                time.sleep(0.5)
                continue
            if self._exiting.is_set():
                # exit_actor() ran on another thread while we read: what we took stays in the
                # mailbox, where _die() fails it; running it would answer a call sent after
                # the caller saw the exit
                break
            self._run_batch(client, reply)
        # exit_actor() on another thread (an async or threaded actor) ends the process once the
        # calls it took out of the mailbox have their errors; returning would end it first
        self._exited.wait(EXIT_WAIT_S)

    def _run_batch(self, client: Any, reply: Any) -> None:
        """Serve one mailbox read: cancellations first, then the calls in order."""
        calls = []
        for stream, entries in reply or []:
            if stream.decode() == self.control:
                self._on_control(entries)
            else:
                calls.extend(entries)
        # a sync actor runs the batch's calls one after another: their results go out
        # together (as a leased worker's do), and before any call blocks
        batch = len(calls) > 1 and self._loop is None and self._pool is None
        with self.executor.results.batch(batch, extra=(self._read_control(), self._on_control_reply)):
            polled = time.monotonic()
            for entry_id, fields in calls:
                if batch and time.monotonic() - polled > CONTROL_POLL_S:
                    self._poll_control(client)  # a cancel of a call queued behind a slow one
                    polled = time.monotonic()
                self._dispatch(entry_id, TaskSpec.decode(fields[SPEC_FIELD]))

    def _on_control(self, entries: list) -> None:
        """Cancellations: flag the call (a sync method may poll is_canceled()), or cancel it."""
        for entry_id, fields in entries or []:
            if b"cancel" in fields:
                task_id = bytes.fromhex(fields[b"cancel"].decode())
                self.executor.cancelled_tasks.add(task_id)
                future = self._async_calls.get(task_id)
                if future is not None:
                    future.cancel()
            mailbox = self.gcs.mailbox_client(self.actor_id)
            mailbox.xack(self.control, ACTOR_GROUP, entry_id)
            mailbox.xdel(self.control, entry_id)


    def _deliver(self, entry_id: bytes, spec: TaskSpec, records: list[bytes]) -> None:
        """Deliver a call's results; a sync actor also picks up cancellations on the way."""
        if spec.task_id in self.executor.cancelled_tasks:
            self.executor.cancelled_tasks.discard(spec.task_id)
            # records: it ran (and was told while running); none: cancelled before it started
            records = [self.executor.cancelled_record(spec, ran=bool(records))] * max(spec.num_returns, 1)
        if self.executor.results.hold_back(spec, records, self.mailbox, entry_id, ACTOR_GROUP):
            return
        self.executor.results.deliver(spec, records, self.mailbox, entry_id, ACTOR_GROUP,
                                      extra=(self._read_control(), self._on_control_reply))

    def _poll_control(self, client: Any) -> None:
        """Read what the control stream holds now, without waiting."""
        try:
            reply = read_group(client, ACTOR_GROUP, self.consumer, {self.control: ">"}, READ_BATCH)
        except REDIS_DOWN_ERRORS:
            return  # read with the next batch
        for _stream, entries in reply or []:
            self._on_control(entries)

    def _read_control(self) -> tuple[Any, ...]:
        return ("XREADGROUP", "GROUP", ACTOR_GROUP, self.consumer, "COUNT", READ_BATCH,
                "STREAMS", self.control, ">")

    def _on_control_reply(self, reply: Any) -> None:
        if isinstance(reply, Exception) or not reply:
            return
        # a raw reply: RESP3 (redis-py's default) answers XREADGROUP with a map, RESP2 with
        # [stream, entries] pairs; fields come as a flat list either way
        for _stream, raw in reply.items() if isinstance(reply, dict) else reply:
            self._on_control([(eid, dict(zip(f[::2], f[1::2], strict=False))) for eid, f in raw])

    def _check_incarnation(self, client: Any) -> None:
        """Every INCARNATION_CHECK_S: exit if the actor has moved on without us, else take over the calls
        an earlier incarnation left behind.

        An incarnation whose raylet froze lives on while the cluster declares its node dead
        and restarts the actor elsewhere; it keeps reading the mailbox until its raylet comes
        back and exits. Calls it took after the new incarnation replayed the pending list
        would stay pending under its consumer for good.
        """
        worker = self.gcs.r.hget(self.gcs.keys.actor(self.actor_id), "worker")
        summary = client.xpending(self.mailbox, ACTOR_GROUP)
        if worker != self.core.worker_hex.encode():
            self.core.commands.flush(timeout=5)  # what we finished is delivered; the rest is retaken
            os._exit(0)
        if any(c["name"].decode() != self.consumer for c in summary.get("consumers") or []):
            self._take_over(client, min_idle_ms=STRAGGLER_IDLE_MS)

    def _take_over(self, client: Any, min_idle_ms: int) -> None:
        """Claim and handle the calls earlier incarnations read but did not finish (those
        taken at least ``min_idle_ms`` ago)."""
        pending = client.xpending_range(self.mailbox, ACTOR_GROUP, "-", "+", 100_000)
        delivered = {p["message_id"]: p["times_delivered"] for p in pending}
        theirs = [p["message_id"] for p in pending
                  if p["consumer"].decode() != self.consumer and p["time_since_delivered"] >= min_idle_ms]
        entries: list[tuple[bytes, Any]] = []
        for start in range(0, len(theirs), 1000):
            entries += client.xclaim(self.mailbox, ACTOR_GROUP, self.consumer, min_idle_ms,
                                     theirs[start : start + 1000])
        entries.sort(key=lambda entry: tuple(int(x) for x in entry[0].split(b"-")))
        for position, (entry_id, fields) in enumerate(entries):
            if not fields:  # deleted meanwhile (a cancelled call): only its pending slot is left
                client.xack(self.mailbox, ACTOR_GROUP, entry_id)
                continue
            spec = TaskSpec.decode(fields[SPEC_FIELD])
            retries_used = delivered.get(entry_id, 1) - 1
            maybe_running = position < self.max_concurrency
            if maybe_running and self.max_task_retries != -1 and retries_used >= self.max_task_retries:
                err = ActorDiedError(
                    f"The actor {self.actor_id} died while running {spec.function_name}() and "
                    f"max_task_retries={self.max_task_retries} allows no more retries.", self.actor_id
                )
                self._fail(entry_id, spec, err)
                continue
            self._dispatch(entry_id, spec)

    def _first_time(self, task_id: bytes) -> bool:
        """Whether this incarnation has not started the call yet (and remember it has now).
        Its result was delivered through the command stream, which resends what a failover
        lost, so a call read again is simply skipped."""
        if task_id in self._started:
            log.warning("actor %s: a call read again after a failover is skipped (it ran already)",
                        self.actor_id)
            return False
        self._started.add(task_id)
        self._started_order.append(task_id)
        if len(self._started_order) > STARTED_KEPT:
            self._started.discard(self._started_order.popleft())
        return True

    def _dispatch(self, entry_id: bytes, spec: TaskSpec) -> None:
        if not self._first_time(spec.task_id):
            return
        if spec.task_id in self.executor.cancelled_tasks:  # cancelled before it started
            self._deliver(entry_id, spec, [])
            return
        if spec.concurrency_group and spec.concurrency_group not in self.concurrency_groups:
            self._fail(entry_id, spec, ValueError(
                f"{spec.function_name}.options(concurrency_group={spec.concurrency_group!r}): the actor "
                f"has no such group; its concurrency_groups: {sorted(self.concurrency_groups) or 'none'}"))
            return
        if self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._call_async(entry_id, spec), self._loop)
            self._async_calls[spec.task_id] = future
            future.add_done_callback(lambda _: self._async_calls.pop(spec.task_id, None))
        elif self._pool is not None:
            self._group_pools.get(self._group_of(spec), self._pool).submit(self._call, entry_id, spec)
        else:
            self._call(entry_id, spec)

    def _group_of(self, spec: TaskSpec) -> str:
        """The concurrency group the called method names ("" for the default group)."""
        if not self.concurrency_groups:
            return ""
        if spec.concurrency_group:  # named at the call: it wins over the method's own
            return spec.concurrency_group
        fn = getattr(type(self.instance), spec.method, None)
        return str(getattr(fn, "__rayr_method_options__", {}).get("concurrency_group") or "")

    def _method(self, spec: TaskSpec) -> Any:
        if spec.method == READY_METHOD and not hasattr(self.instance, READY_METHOD):
            return _ready
        try:
            return getattr(self.instance, spec.method)
        except AttributeError:
            def missing(*_: Any, **__: Any) -> None:
                raise AttributeError(f"'{type(self.instance).__name__}' actor has no method {spec.method!r}")
            return missing

    def _call(self, entry_id: bytes, spec: TaskSpec) -> None:
        self.core.set_current_task(spec.task_id, spec.resources, spec)
        try:
            records = self.executor.run(spec, self._method(spec))
        except ActorExitRequest:
            self._exit(entry_id, spec)
            return
        finally:
            self.core.set_current_task(None)
        self._deliver(entry_id, spec, records)

    # ---------------------------------------------------------------- async
    def _start_loop(self) -> None:
        ready = threading.Event()

        def loop_thread() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._group_semaphores = {name: asyncio.Semaphore(size)
                                      for name, size in self.concurrency_groups.items()}
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=loop_thread, name="rayr-actor-loop", daemon=True).start()
        ready.wait()

    async def _call_async(self, entry_id: bytes, spec: TaskSpec) -> None:
        assert self._semaphore is not None and self._loop is not None
        async with self._group_semaphores.get(self._group_of(spec), self._semaphore):
            self.core.set_current_task(spec.task_id, spec.resources, spec)
            if self.core.events is not None:
                self.core.events.started(spec, time.time())
            fn = self._method(spec)
            n = max(spec.num_returns, 1)
            try:
                args, kwargs, failed = self.executor.arguments(spec)
                if failed is not None:
                    records = [failed] * n
                else:
                    result = fn(*args, **kwargs)
                    if spec.num_returns == STREAMING:
                        records = [await self._stream_async(spec, result)]
                    elif spec.num_returns == DYNAMIC:
                        records = [await self._loop.run_in_executor(None, self.executor.dynamic_items, spec,
                                                                    result)]
                    else:
                        if inspect.isawaitable(result):
                            result = await result
                        records = self.executor.result_records(spec, result)
            except ActorExitRequest:
                await self._loop.run_in_executor(None, self._exit, entry_id, spec)
                return
            except asyncio.CancelledError:
                records = [self.executor.cancelled_record(spec, ran=True)] * n
                self.executor.cancelled_tasks.discard(spec.task_id)
            except Exception as err:
                records = [self.executor.error_record(spec, err)] * n
            await self._loop.run_in_executor(None, self._deliver, entry_id, spec, records)

    def _fail(self, entry_id: bytes, spec: TaskSpec, err: BaseException) -> None:
        """Resolve a call's returns to ``err`` and ACK it."""
        records = [rec.error_record(serialization.dumps(err))] * max(spec.num_returns, 1)
        self.executor.results.deliver(spec, records, self.mailbox, entry_id, ACTOR_GROUP)

    async def _stream_async(self, spec: TaskSpec, items: Any) -> bytes:
        """Like TaskExecutor.stream_items, for async (or plain) generators on the event loop."""
        assert self._loop is not None
        if not inspect.isasyncgen(items):
            return await self._loop.run_in_executor(None, self.executor.stream_items, spec, items)
        count = 0
        store = self.executor.store_item
        try:
            async for value in items:
                await self._loop.run_in_executor(None, store, spec, count, value)
                count += 1
        except Exception as err:
            record = self.executor.error_record(spec, err)
            await self._loop.run_in_executor(None, store, spec, count, None, record)
            count += 1
        return rec.value_record(serialization.dumps(count))

    # ----------------------------------------------------------------- exit
    def _exit(self, entry_id: bytes, spec: TaskSpec) -> None:
        """exit_actor(): fail this call and everything queued, then end the process."""
        self._exiting.set()
        self.executor.results.flush()  # the calls of its batch that ran before this one
        cause = f"The actor {self.actor_id} exited on purpose (exit_actor() in {spec.function_name}())."
        try:
            self._fail(entry_id, spec, ActorDiedError(cause, self.actor_id))
            self._die(cause)
            self.core.commands.flush()
        finally:
            self._exited.set()
        os._exit(0)
