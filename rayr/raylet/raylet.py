"""The raylet: one per node. The I/O shell around the pure :class:`Scheduler`.

Threads (see "Threads and locks" in docs/architecture.md):
- main: worker sockets, task dispatch, crash handling, heartbeats, kills and cancels;
- reader (one, or one per spread tag on a Redis Cluster; ``reader.py``): pulls task specs
  from Redis streams (``XREADGROUP``), only as many as the node's free resources can start,
  and hands them to main through a queue;
- control: reads the node's control stream (``gcs/control.py``) at once, however busy;
- rayr-send (2): sends objects other nodes pull; rayr-env (2): sets runtime envs up;
- rayr-zygote: reads the zygote's replies (forked workers' pids and exit codes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psutil
import redis

from rayr import protocol
from rayr import resources as res
from rayr.accelerators import node_gpu_ids
from rayr.config import Settings, daemon_settings
from rayr.exceptions import ActorDiedError, TaskCancelledError
from rayr.gcs import control, logs
from rayr.gcs.client import NODE_DEAD, GcsClient, connect_as, until_reachable
from rayr.gcs.rows import ActorState, NodeInfo
from rayr.keys import SPREAD_TAGS, TASK_GROUP, Keys, spread_tag
from rayr.object_store import transfer
from rayr.object_store.orphans import NamespaceLock, reclaim_orphans, spill_directory, store_directories
from rayr.object_store.registry import open_backend
from rayr.private_files import private_dir
from rayr.raylet.env_workers import EnvWorkers
from rayr.raylet.reader import TaskReader
from rayr.raylet.scheduler import QueuedTask, Scheduler, split_kind
from rayr.raylet.worker_pool import WorkerHandle, WorkerPool
from rayr.runtime_env.installer import WorkerEnv
from rayr.task_spec import CREATION_FIELD, RESTART_FIELD, SPEC_FIELD, TaskSpec

log = logging.getLogger("rayr.raylet")
T = TypeVar("T")


class Raylet:
    """Registers the node, schedules tasks from Redis onto local workers, heartbeats."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis_url: str,
        node_id: str,
        resources: dict[str, float],
        session_dir: str,
        is_head: bool,
        store_backend: str,
        host: str = "127.0.0.1",
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.node_id = node_id
        self.keys = Keys(settings.cluster_name)
        self.gcs = GcsClient(connect_as(redis_url, settings), self.keys)
        self.session_dir = session_dir
        self.is_head = is_head
        self.host = host
        self.store_namespace = f"rayr-{node_id[:16]}"
        self.store_backend, self.store_options = choose_store(
            store_backend, int(resources.get("object_store_memory", 0)) or None, settings, session_dir
        )
        self.store = open_backend(self.store_backend, self.store_namespace, self.store_options)
        # free what raylets that died on this host left in their stores, and mark ours as
        # live until we exit (the kernel drops the lock however we die)
        reclaim_orphans([*store_directories(settings), *self.store.directories()])
        self.store_lock = NamespaceLock(self.store_namespace, self.store.directories())
        cpus = resources.get("CPU", 0)
        self.sched = Scheduler(
            total=dict(resources),
            max_workers=max(4, int(cpus * settings.max_workers_per_cpu)),
            min_pool=max(1, int(cpus)),
            prefetch=0,  # leased workers pull the next task themselves
            gpu_ids=node_gpu_ids(resources.get("GPU", 0.0))[0],
        )
        self.lock = threading.Lock()  # guards self.sched (main + reader threads)
        self._incoming: queue.SimpleQueue[list[QueuedTask]] = queue.SimpleQueue()
        # read by the readers, not yet handed to the scheduler by the main loop (under lock):
        # without them the reader's next budget would count their room as free, and a task it
        # read on that room would wait for a worker's lease to end
        self.in_transit: deque[QueuedTask] = deque()
        self._kills: queue.SimpleQueue[str] = queue.SimpleQueue()  # actor ids to kill
        self._env_prepares: queue.SimpleQueue[str] = queue.SimpleQueue()  # envs to set up early
        self._transfers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rayr-send")
        # (task id, flags, consumer that took it: the node, or '<node>.<worker>' for a lease)
        self._cancels: queue.SimpleQueue[tuple[bytes, str, str]] = queue.SimpleQueue()
        # cancels that found no task here yet (it may still be on its way from the reader)
        self._cancel_later: dict[bytes, float] = {}  # task id -> when the cancel arrived
        self._force_cancelled: set[bytes] = set()  # tasks whose worker we killed to cancel them
        self._actor_of: dict[str, str] = {}  # worker id -> actor id hex
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # one selector for the raylet's life: worker sockets come and go, the wake socket stays
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.stopping = threading.Event()
        self._signalled = False  # set by the SIGTERM/SIGINT handler, acted on by the main loop
        self.declared_dead = False  # the cluster declared this node dead: stop, rejoin as new
        self.shapes_dirty = threading.Event()
        # scheduler key -> the task streams of it this node reads (shared ones, and those
        # targeted here), one per submitter tag; replaced whole by refresh_shapes
        self.streams_of: dict[str, list[str]] = {}
        self._key_of: dict[str, str] = {}  # task stream -> its scheduler key
        self._readers: list[TaskReader] = []
        log_dir = os.path.join(session_dir, "logs")
        private_dir(log_dir)
        self.pool = WorkerPool(
            [
                "--redis-url", redis_url,
                "--node-id", node_id,
                "--store-backend", self.store_backend,
                "--store-namespace", self.store_namespace,
                "--store-options-json", json.dumps(self.store_options),
                "--settings-json", settings.model_dump_json(),
            ],
            log_dir,
        )
        self.envs = EnvWorkers(self)

    # ------------------------------------------------------------- lifecycle
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._register()
        for _ in range(max(1, int(self.sched.total.get("CPU", 1)))):
            self._start_worker()
        # one reader per spread tag on a Redis Cluster (one XREADGROUP cannot span slots)
        tags = range(SPREAD_TAGS) if self.gcs.spread_only else [None]
        self._readers = [TaskReader(self, tag) for tag in tags]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._control_loop, name="rayr-control", daemon=True).start()
        try:
            self._main_loop()
        finally:
            self._shutdown()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag and a byte: the handler may interrupt this thread inside a lock (an
        # Event.set, say), and taking any lock here could deadlock the raylet for good.
        self._signalled = True
        try:
            self._wake_w.send(b"s")
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        for reader in self._readers:
            reader.capacity.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _register(self) -> None:
        node_stream = self.keys.node_stream(self.node_id)
        self.gcs.ensure_group(node_stream)
        totals = dict(self.sched.total)
        self.gcs.register_node(
            NodeInfo(
                node_id=self.node_id,
                host=self.host,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                is_head=self.is_head,
                resources_total=totals,
                resources_available=totals,
                store_backend=self.store_backend,
                store_namespace=self.store_namespace,
                store_options=self.store_options,
                session_dir=self.session_dir,
                start_time=time.time(),
            ),
            ttl_s=self.settings.node_timeout_s,
        )
        # after registering: a submitter that adds a shape later will poke us
        self.refresh_shapes()

    def refresh_shapes(self) -> None:
        """Learn the task streams this node reads: every shared one, and those targeted here."""
        streams_of: dict[str, list[str]] = {}
        for stream in self.gcs.task_streams():
            key, node, _tag = self.keys.parse_task_stream(stream)
            if not node or node == self.node_id:
                streams_of.setdefault(key, []).append(stream)
        # made by their submitters first; again here in case a stream was lost (a Redis restart)
        self.gcs.ensure_groups([s for streams in streams_of.values() for s in streams])
        with self.lock:
            self._key_of.update((s, key) for key, streams in streams_of.items() for s in streams)
            changed, self.streams_of = streams_of != self.streams_of, streams_of
            self.sched.add_shapes(set(streams_of))
        if changed:  # the other readers (one per tag on a Redis Cluster) may have new streams
            self._capacity_freed()

    def _shutdown(self) -> None:
        self._transfers.shutdown(wait=False, cancel_futures=True)
        self.envs.shutdown()
        self.pool.stop_all()
        self.store.cleanup()
        self.store_lock.release()
        if self.declared_dead:
            return  # keep the cluster's reason
        try:
            self.gcs.set_node_state(self.node_id, NODE_DEAD, "stopped")
        except redis.RedisError:
            pass

    # ---------------------------------------------------------------- control
    def _control_loop(self) -> None:
        """Serve the node stream at once, however busy the node: pokes, kills, cancels,
        pulls of objects this node holds, and jobs that ended."""
        client: Any = connect_as(self.redis_url, self.settings)
        stream = self.keys.node_stream(self.node_id)
        while not self.stopping.is_set():
            try:
                reply = client.xreadgroup(TASK_GROUP, self.node_id, {stream: ">"}, count=64, block=1000)
                for _name, entries in reply or []:
                    for entry_id, fields in entries:
                        self._on_control(fields)
                        client.xack(stream, TASK_GROUP, entry_id)
                        client.xdel(stream, entry_id)
            except redis.RedisError:
                if self.stopping.is_set():
                    return
                log.exception("reading the node stream failed; retrying")
                time.sleep(0.5)
        client.close()

    def _on_control(self, fields: dict[bytes, bytes]) -> None:
        for message in control.parse(fields):
            self._on_control_message(message)

    def _on_control_message(self, message: control.Message) -> None:
        match message:
            case control.Poke():
                self.shapes_dirty.set()
                self._capacity_freed()  # wake the task reader to read the new stream
            case control.Kill(actor):
                self._kills.put(actor)
                self._wake_w.send(b"k")
            case control.Cancel(task_id, flags, consumer):
                self._cancels.put((task_id, flags, consumer))
                self._wake_w.send(b"c")
            case control.Pull(oid, dest, size):
                self._transfers.submit(self._send_object, oid, dest, size)
            case control.ReserveBundles(pg, bundles, reply):
                with self.lock:
                    ok = self.sched.reserve_bundles(pg, bundles)
                    total = dict(self.sched.total)
                if ok:
                    self.gcs.r.hset(self.keys.node(self.node_id), "resources_total", json.dumps(total))
                    self._publish_resources()
                    self.shapes_dirty.set()
                    self._capacity_freed()
                self.gcs.r.rpush(reply, f"{'ok' if ok else 'fail'}:{self.node_id}")
            case control.ReleaseBundles(pg):
                with self.lock:
                    self.sched.release_bundles(pg)
                    total = dict(self.sched.total)
                self.gcs.r.hset(self.keys.node(self.node_id), "resources_total", json.dumps(total))
                self._publish_resources()
                self._capacity_freed()
            case control.JobDone(job_hex):  # free what the ended job left in this node's store
                self.store.cleanup(bytes.fromhex(job_hex))
                self._drop_job_tasks(job_hex)
            case control.PrepareEnv(digest):  # a job's runtime env, installed before its first task
                self._env_prepares.put(digest)
                self.wake()
            case control.ListLogs() | control.ReadLog():  # `rayr logs`, from any host
                logs.answer(self.gcs, os.path.join(self.session_dir, "logs"), message, self.pool.pids)

    def wake(self) -> None:
        """Have the main loop look at its queues (any thread)."""
        try:
            self._wake_w.send(b"w")
        except OSError:
            pass

    def _drop_job_tasks(self, job_hex: str) -> None:
        """The job ended: tasks of it that this node read but has not started never will."""
        def of_job(task: QueuedTask) -> bool:
            return not task.actor and TaskSpec.decode(task.spec).job_hex == job_hex

        dropped = []
        with self.lock:
            while (task := self.sched.remove_queued(of_job)) is not None:
                dropped.append(task)
        for task in dropped:
            self._finish_cancelled(task)
        if dropped:
            self._capacity_freed()

    def _send_object(self, oid: bytes, dest: str, size: int) -> None:
        try:
            shard = self.gcs.shard(spread_tag(oid.hex()))
            transfer.send_object(shard, self.keys, self.store, oid, dest, size)
        except Exception:
            log.exception("sending object %s to %s failed", oid.hex(), dest)

    def capacity_freed(self) -> None:
        self._capacity_freed()

    def _capacity_freed(self) -> None:
        """Wake the task readers: they may now pull more (or other) tasks."""
        for reader in self._readers:
            reader.wake()

    def known_entries(self) -> set[bytes]:
        """(Under the lock.) The stream entries of every task this node has read and holds."""
        sched = self.sched
        known = {t.entry_id for t in (*sched.ready, *sched.overflow, *self.in_transit)}
        return known | {t.entry_id for t in sched.running.values()}

    def take(self, reply: list, reader: TaskReader | None = None) -> None:
        """Hand tasks ``reader`` read (an XREADGROUP reply) to the main loop."""
        tasks: list[QueuedTask] = []
        for stream_name, entries in reply or []:
            stream = stream_name.decode()
            for entry_id, fields in entries:
                if SPEC_FIELD not in fields:  # a deleted (cancelled) entry: nothing to run
                    self.gcs.stream_client(stream).xack(stream, TASK_GROUP, entry_id)
                    continue
                shape = self._key_of[stream]
                task = QueuedTask(stream, entry_id, fields[SPEC_FIELD], shape, res.parse_shape(shape),
                                  env=res.env_of(shape))
                if CREATION_FIELD in fields:  # actor creation: it will hold other resources once alive
                    spec = TaskSpec.decode(task.spec)
                    task.actor = spec.actor_id
                    task.restart = RESTART_FIELD in fields  # its node died: replay its mailbox
                    task.lifetime = dict((spec.actor_options or {}).get("lifetime_resources", {}))
                tasks.append(task)
        if tasks:
            with self.lock:  # counted against the next read's budget until the main loop has them
                self.in_transit.extend(tasks)
            self._incoming.put(tasks)
            self._wake_w.send(b"t")
            for other in self._readers:
                if other is not reader:
                    # (on a Redis Cluster) blocked on a budget that these tasks took: it reads
                    # the budget again, rather than take more than fits when its tasks come
                    other.unpark()

    # ------------------------------------------------------------------ main
    def _main_loop(self) -> None:
        next_beat = 0.0
        while not self.stopping.is_set():
            if self._signalled:
                self.stop()
                break
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + self.settings.heartbeat_interval_s
            events = self._selector.select(timeout=max(0.0, next_beat - time.monotonic()))
            try:
                for key, _ in events:
                    if key.data is None:
                        self._drain_wake()
                    elif key.data.worker_id in self.pool.workers:  # not removed earlier in this round
                        self._on_worker_message(key.data)
                self._act()
            except redis.RedisError:  # e.g. Redis restarting: keep the node up, retry next round
                log.exception("a scheduling round failed on a Redis error")
                time.sleep(0.1)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        for tasks in _drained(self._incoming):
            with self.lock:
                for _ in range(len(tasks)):  # batches arrive in the order the reader took them
                    self.in_transit.popleft()
            if self._cancel_later:
                tasks = self._drop_cancelled(tasks)
            with self.lock:
                self.sched.on_tasks(tasks)
        self.envs.on_wake()
        for digest in _drained(self._env_prepares):
            self.envs.prepare(digest)
        for cancel in _drained(self._cancels):
            self._cancel(*cancel)
        for actor_id in _drained(self._kills):
            for worker_id, hosted in list(self._actor_of.items()):
                handle = self.pool.workers.get(worker_id)
                if hosted == actor_id and handle is not None and handle.proc.poll() is None:
                    handle.proc.kill()  # its socket closes; _on_worker_exit decides what follows

    def _cancel(self, task_id: bytes, flags: str, consumer: str) -> None:
        """Drop a queued task, or interrupt (or, with force, kill) the worker running it."""
        def is_it(task: QueuedTask) -> bool:
            return not task.actor and TaskSpec.decode(task.spec).task_id == task_id

        with self.lock:
            queued = self.sched.remove_queued(is_it)
            running = next((w for w, t in self.sched.running.items() if is_it(t)), None)
        if running is None and "." in consumer:  # a leased worker took it from the stream itself
            running = consumer.split(".", 1)[1]
        if queued is not None:
            self._finish_cancelled(queued)
            self._capacity_freed()
            return
        handle = self.pool.workers.get(running) if running else None
        if handle is None:
            self._cancel_later[task_id] = time.monotonic()
            return
        if "force" in flags.split(","):
            self._force_cancelled.add(task_id)
            handle.proc.kill()  # _on_worker_exit resolves the task as cancelled
        else:
            with open(self.pool.cancel_file(handle.worker_id), "w") as f:
                f.write(task_id.hex())
            handle.proc.send_signal(signal.SIGINT)

    def _drop_cancelled(self, tasks: list[QueuedTask]) -> list[QueuedTask]:
        keep = []
        for task in tasks:
            spec_id = TaskSpec.decode(task.spec).task_id
            if spec_id in self._cancel_later:
                del self._cancel_later[spec_id]
                self._finish_cancelled(task)
            else:
                keep.append(task)
        return keep

    def _finish_cancelled(self, task: QueuedTask) -> None:
        spec = TaskSpec.decode(task.spec)
        with self.gcs.stream_pipeline(task.stream) as pipe:
            self.gcs.fail_tasks([spec], TaskCancelledError(f"Task {spec.name} was cancelled."), pipe)
            if task.stream:
                pipe.xack(task.stream, TASK_GROUP, task.entry_id)
                pipe.xdel(task.stream, task.entry_id)
            pipe.execute()

    def _on_worker_message(self, handle: WorkerHandle) -> None:
        try:
            msg = protocol.decode(handle.conn.recv())
        except (EOFError, OSError):
            self._on_worker_exit(handle)
            return
        except ValueError as err:  # a bug, not a reason to stop the node
            log.error("worker %s: %s", handle.worker_id, err)
            return
        freed = isinstance(msg, protocol.Done | protocol.ActorReady | protocol.ActorFailed) or (
            isinstance(msg, protocol.Blocked) and msg.blocked
        )
        with self.lock:
            match msg:
                case protocol.Ready():
                    handle.ready = True
                    self.sched.on_worker_ready(handle.worker_id, handle.env)
                case protocol.Done():
                    self.sched.on_task_done(handle.worker_id)
                case protocol.Blocked(blocked=True):
                    self.sched.on_worker_blocked(handle.worker_id)
                case protocol.Blocked(blocked=False):
                    self.sched.on_worker_unblocked(handle.worker_id)
                case protocol.ActorReady(actor_id):
                    self._actor_of[handle.worker_id] = actor_id
                    self.sched.on_actor_ready(handle.worker_id)
                case protocol.ActorFailed():
                    self.sched.on_worker_retiring(handle.worker_id)
                case _:
                    log.error("worker %s sent %r, which a raylet does not take", handle.worker_id, msg)
        if freed:
            self._capacity_freed()
        elif isinstance(msg, protocol.Blocked):
            # the worker waits on its leased stream again: the reader, parked on that stream
            # while the worker was blocked, must leave it the first claim (see TaskReader.read)
            for reader in self._readers:
                reader.unpark()

    def _on_worker_exit(self, handle: WorkerHandle) -> None:
        if handle.worker_id in self.pool.workers:
            self._selector.unregister(handle.conn.fileno())
        self.pool.remove(handle.worker_id)
        self._forget_inbox(handle.worker_id)
        actor_id = self._actor_of.pop(handle.worker_id, None)
        if actor_id is not None:
            with self.lock:
                self.sched.on_actor_died(handle.worker_id)
            until_reachable(functools.partial(self._actor_exited, actor_id, handle), "restarting an actor")
            self._capacity_freed()
            return
        with self.lock:
            if handle.ready:
                task = self.sched.on_worker_died(handle.worker_id)
            else:
                self.sched.on_worker_failed_to_start(handle.env)
                task = None
        env = split_kind(handle.env)[0]
        if not handle.ready and env:  # it could not even start in its env: say why
            self.envs.worker_failed(env, f"its worker exited with code {handle.proc.returncode} "
                                    f"before starting:\n{self.pool.log_tail(handle.worker_id)}")
        code = handle.proc.returncode
        if task is not None:
            why = f"worker pid={handle.proc.pid} exited with code {code}"
            # these tasks exist nowhere else: wait out a Redis restart rather than drop them
            unfinished = until_reachable(lambda: self._unfinished_of(handle, task), "recovering tasks")
            for lost in unfinished:
                until_reachable(functools.partial(self._task_crashed, lost, why), "re-queueing a task")
        self._capacity_freed()

    def _forget_inbox(self, worker_id: str) -> None:
        """A worker exited: what it was sent goes, and the monitor deletes what comes later
        (results of tasks it started) for a while."""
        try:
            self.gcs.drop_inbox(worker_id)
            self.gcs.r.zadd(self.keys.gone_workers, {worker_id: time.time()})
        except redis.RedisError:  # Redis away: its inbox outlives it; nothing is lost
            log.warning("could not delete the inbox of exited worker %s", worker_id)

    def _unfinished_of(self, handle: WorkerHandle, task: QueuedTask) -> list[QueuedTask]:
        """What a dead worker left unfinished: the task we gave it, if not yet ACKed, and the
        tasks it took itself under its lease (the pending entries of its own consumer)."""
        if task.actor or not task.stream:
            return [task]
        consumer = f"{self.node_id}.{handle.worker_id}"
        r = self.gcs.stream_client(task.stream)
        lost = []
        if r.xpending_range(task.stream, TASK_GROUP, task.entry_id, task.entry_id, 1):
            lost.append(task)
        for entry in r.xpending_range(task.stream, TASK_GROUP, "-", "+", 100, consumername=consumer):
            found = r.xrange(task.stream, entry["message_id"], entry["message_id"])
            if found and SPEC_FIELD in found[0][1]:
                lost.append(QueuedTask(task.stream, entry["message_id"], found[0][1][SPEC_FIELD],
                                       task.shape, task.request, env=task.env))
            else:  # the entry is gone (finished or cancelled): just clear the pending slot
                r.xack(task.stream, TASK_GROUP, entry["message_id"])
        return lost

    def _actor_exited(self, actor_id: str, handle: WorkerHandle) -> None:
        """Restart the actor here if it may be restarted; otherwise it is dead for good."""
        info = self.gcs.actor_row(actor_id)
        if info is None or info.state == ActorState.DEAD:
            return  # killed, exited on purpose, or its job ended: already handled
        why = f"its worker process (pid={handle.proc.pid}) exited with code {handle.proc.returncode}"
        if info.may_restart() and info.creation_spec is not None:
            if not self.gcs.set_actor_state(actor_id, ActorState.RESTARTING, restarts=info.restarts + 1):
                return  # killed meanwhile
            spec = TaskSpec.decode(info.creation_spec)
            lifetime = dict((spec.actor_options or {}).get("lifetime_resources", {}))
            env = (spec.actor_options or {}).get("runtime_env", "")
            task = QueuedTask("", b"", info.creation_spec, "", lifetime, actor_id, lifetime, True, env)
            with self.lock:
                self.sched.on_tasks([task])
            log.warning("actor %s restarting (%d/%s): %s",
                        actor_id, info.restarts + 1, info.max_restarts, why)
            return
        cause = (
            f"The actor {actor_id} ({info.class_name}) died: {why}, and it has no restarts "
            f"left (max_restarts={info.max_restarts})."
        )
        self.gcs.fail_tasks(self.gcs.mark_actor_dead(actor_id, cause), ActorDiedError(cause, actor_id))

    def _task_crashed(self, task: QueuedTask, why: str) -> None:
        if task.actor:
            self._creation_crashed(task, why)
            return
        spec = TaskSpec.decode(task.spec)
        if spec.task_id in self._force_cancelled or self.gcs.cancel_flags(spec.task_id.hex()) is not None:
            self._force_cancelled.discard(spec.task_id)
            self._finish_cancelled(task)  # a cancelled task is never retried
            return
        with self.gcs.stream_pipeline(task.stream) as pipe:
            self.gcs.retry_or_fail(spec, task.stream, why, pipe)
            pipe.xack(task.stream, TASK_GROUP, task.entry_id)
            pipe.xdel(task.stream, task.entry_id)
            pipe.execute()

    def _creation_crashed(self, task: QueuedTask, why: str) -> None:
        """The worker died while constructing an actor: retry within max_restarts."""
        info = self.gcs.actor_row(task.actor)
        if info is None or info.state == ActorState.DEAD:
            return
        if info.may_restart():
            if not self.gcs.set_actor_state(task.actor, ActorState.RESTARTING, restarts=info.restarts + 1):
                return
            with self.lock:
                self.sched.on_tasks([dataclasses.replace(task)])
            return
        cause = f"The actor {task.actor} died while being constructed: {why}."
        self.gcs.fail_tasks(self.gcs.mark_actor_dead(task.actor, cause), ActorDiedError(cause, task.actor))
        spec = TaskSpec.decode(task.spec)
        with self.gcs.stream_pipeline(task.stream) as pipe:
            if not task.restart:
                self.gcs.fail_tasks([spec], ActorDiedError(cause, task.actor), pipe)
            if task.stream:
                pipe.xack(task.stream, TASK_GROUP, task.entry_id)
                pipe.xdel(task.stream, task.entry_id)
            pipe.execute()

    def _act(self) -> None:
        with self.lock:
            dispatches = self.sched.dispatches()
            to_start, retire = self.sched.plan_workers(time.monotonic())
        for d in dispatches:
            handle = self.pool.workers.get(d.worker)
            try:
                assert handle is not None
                task = d.task
                if task.actor:
                    handle.conn.send(protocol.encode(
                        protocol.BecomeActor(task.stream, task.entry_id, task.spec, task.restart)))
                else:
                    # a lease: after this task the worker keeps taking the shape's tasks itself
                    handle.conn.send(protocol.encode(
                        protocol.RunTasks([(task.stream, task.entry_id, task.spec)], True)))
            except (AssertionError, OSError):
                if handle is not None:
                    self._on_worker_exit(handle)
        for worker_id in retire:  # idle workers making room, or long idle beyond the pool
            retired = self.pool.workers.get(worker_id)
            if retired is not None:
                try:
                    retired.conn.send(protocol.encode(protocol.Exit()))
                except OSError:
                    pass
        for kind, count in to_start.items():
            for _ in range(count):
                if split_kind(kind)[0]:
                    self.envs.start_worker(kind)
                else:
                    self._start_worker(kind)
        self._reap_slow_starters()

    def _start_worker(self, kind: str = "") -> None:
        with self.lock:
            self.sched.on_worker_started(kind)
        self.spawn_worker(kind, None)

    def spawn_worker(self, kind: str, worker_env: WorkerEnv | None) -> None:
        """Launch a worker of ``kind`` (see ``worker_kind``) the scheduler was told about
        (``on_worker_started``)."""
        try:
            handle = self.pool.start(kind, worker_env)
        except OSError as err:  # e.g. a runtime env's interpreter that cannot run
            log.error("could not start a worker (kind %r): %s", kind, err)
            with self.lock:
                self.sched.on_worker_failed_to_start(kind)
            env = split_kind(kind)[0]
            if env:
                self.envs.worker_failed(env, f"could not start a worker: {err}")
            return
        self._selector.register(handle.conn.fileno(), selectors.EVENT_READ, handle)

    def _reap_slow_starters(self) -> None:
        limit = self.settings.worker_start_timeout_s
        now = time.monotonic()
        for handle in list(self.pool.workers.values()):
            if not handle.ready and now - handle.started > limit:
                log.error("worker %s did not start within %ss; replacing it", handle.worker_id, limit)
                self._on_worker_exit(handle)

    def _heartbeat(self) -> None:
        # a cancel for a task that had already finished here never finds it: forget it
        stale = time.monotonic() - 60
        for task_id in [t for t, at in self._cancel_later.items() if at < stale]:
            del self._cancel_later[task_id]
        self._publish_resources(with_store=True)

    def _publish_resources(self, with_store: bool = False) -> None:
        """Refresh liveness and free resources (and store usage) in the node table (any thread)."""
        with self.lock:
            available = {k: round(v, 6) for k, v in self.sched.available.items()}
            load = len(self.sched.running) + len(self.sched.ready) + len(self.sched.overflow)
        store = host = None
        if with_store:
            store = dataclasses.asdict(self.store.usage())
            memory = psutil.virtual_memory()
            # since the last heartbeat's call (the first says 0)
            host = {"cpu_percent": psutil.cpu_percent(None), "mem_total": memory.total,
                    "mem_used": memory.total - memory.available}
        try:
            alive = self.gcs.heartbeat(self.node_id, self.settings.node_timeout_s, available, load,
                                       store, host)
        except redis.RedisError:
            log.exception("heartbeat failed")
            return
        if not alive and not self.declared_dead:
            # the cluster gave this node up (its work went elsewhere): resuming could run tasks
            # twice, so stop; started again, it joins as a new node
            reason = self.gcs.r.hget(self.gcs.keys.node(self.node_id), "death_reason") or b""
            log.error("node %s was declared dead by the cluster (%s); stopping. Start the raylet "
                      "again to rejoin as a new node.", self.node_id[:12], reason.decode(errors="replace"))
            self.declared_dead = True
            self._signalled = True


def _drained(items: queue.SimpleQueue[T]) -> Iterator[T]:
    """What ``items`` holds now, taken one by one without blocking."""
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return


def choose_store(
    backend: str, capacity: int | None, settings: Settings, session_dir: str
) -> tuple[str, dict[str, Any]]:
    """The backend and options of this node's store.

    ``shm`` falls back to ``mmap`` (files under the session directory) when /dev/shm cannot
    hold the configured capacity, as in a container whose /dev/shm is 64 MiB.
    """
    options: dict[str, Any] = {"capacity": capacity, "spill_directory": spill_directory(settings)}
    if backend == "shm" and capacity:
        try:
            stats = os.statvfs("/dev/shm")
            shm_free = stats.f_bavail * stats.f_frsize
        except OSError:
            shm_free = 0
        if shm_free < capacity:
            log.warning(
                "/dev/shm has %d bytes free, less than the object store's %d: using the 'mmap' "
                "backend instead (or give the node a smaller object_store_memory)",
                shm_free, capacity,
            )
            backend = "mmap"
    if backend == "mmap":
        directory = os.path.join(session_dir, "objects")
        os.makedirs(directory, exist_ok=True)
        options["directory"] = directory
    if backend not in ("shm", "mmap"):  # a third-party backend takes only its own options
        options = {}
    return backend, options


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rayr.raylet")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--resources-json", required=True)
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--settings-json", required=True)
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    opts = parser.parse_args(argv)
    settings = daemon_settings(opts.settings_json)
    raylet = Raylet(
        settings=settings,
        redis_url=opts.redis_url,
        node_id=opts.node_id,
        resources=json.loads(opts.resources_json),
        session_dir=opts.session_dir,
        is_head=opts.head,
        store_backend=settings.object_store_backend,
        host=opts.host,
    )
    raylet.run()
    if raylet.declared_dead:
        sys.exit(3)
