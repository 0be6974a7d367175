"""The raylet: one per node. The I/O shell around the pure :class:`Scheduler`.

Threads:
- main: worker sockets, task dispatch, crash handling, heartbeats;
- reader: pulls task specs from Redis streams (``XREADGROUP``), only as many as the
  node's free resources can start, and hands them to main through a queue.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import redis

from rayr import serialization
from rayr.config import Settings
from rayr.exceptions import WorkerCrashedError
from rayr.gcs import records as rec
from rayr.gcs.client import NODE_ALIVE, NODE_DEAD, GcsClient, connect
from rayr.keys import TASK_GROUP, Keys
from rayr.object_store.registry import open_backend
from rayr.raylet import resources as res
from rayr.raylet.scheduler import QueuedTask, Scheduler
from rayr.raylet.worker_pool import WorkerHandle, WorkerPool
from rayr.task_spec import TaskSpec

log = logging.getLogger("rayr.raylet")


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
        self.gcs = GcsClient(connect(redis_url, settings.redis_password), self.keys)
        self.session_dir = session_dir
        self.is_head = is_head
        self.host = host
        self.store_backend = store_backend
        self.store_namespace = f"rayr-{node_id[:16]}"
        self.store = open_backend(store_backend, self.store_namespace)
        cpus = resources.get("CPU", 0)
        self.sched = Scheduler(
            total=dict(resources),
            max_workers=max(4, int(cpus * settings.max_workers_per_cpu)),
        )
        self._lock = threading.Lock()  # guards self.sched (main + reader threads)
        self._capacity = threading.Event()  # set when resources free up, wakes the reader
        self._incoming: queue.SimpleQueue[list[QueuedTask]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self._shapes_dirty = threading.Event()
        self._reader_parked = False  # reader blocked on the node stream alone
        self._reader_client_id = 0
        log_dir = os.path.join(session_dir, "logs")
        os.makedirs(log_dir, exist_ok=True)
        self.pool = WorkerPool(
            [
                "--redis-url", redis_url,
                "--node-id", node_id,
                "--store-backend", store_backend,
                "--store-namespace", self.store_namespace,
                "--settings-json", settings.model_dump_json(),
            ],
            log_dir,
        )

    # ------------------------------------------------------------- lifecycle
    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        self._register()
        for _ in range(max(1, int(self.sched.total.get("CPU", 1)))):
            self._start_worker()
        reader = threading.Thread(target=self._reader_loop, name="rayr-reader", daemon=True)
        reader.start()
        try:
            self._main_loop()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._capacity.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _register(self) -> None:
        node_stream = self.keys.node_stream(self.node_id)
        self.gcs.ensure_group(node_stream)
        totals = dict(self.sched.total)
        self.gcs.register_node(
            self.node_id,
            {
                "node_id": self.node_id,
                "state": NODE_ALIVE,
                "host": self.host,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "is_head": int(self.is_head),
                "resources_total": totals,
                "resources_available": totals,
                "store_backend": self.store_backend,
                "store_namespace": self.store_namespace,
                "session_dir": self.session_dir,
                "start_time": time.time(),
            },
            ttl_s=self.settings.node_timeout_s,
        )
        # after registering: a submitter that adds a shape later will poke us
        self._refresh_shapes()

    def _refresh_shapes(self) -> None:
        shapes = self.gcs.shapes()
        for shape in shapes:
            self.gcs.ensure_group(self.keys.shape_stream(shape))
        with self._lock:
            self.sched.add_shapes(shapes)

    def _shutdown(self) -> None:
        self.pool.stop_all()
        self.store.cleanup()
        try:
            self.gcs.set_node_state(self.node_id, NODE_DEAD, "stopped")
        except redis.RedisError:
            pass

    # ---------------------------------------------------------------- reader
    def _reader_loop(self) -> None:
        client: Any = connect(self.redis_url, self.settings.redis_password, single_connection_client=True)
        self._reader_client_id = int(client.client_id())
        node_stream = self.keys.node_stream(self.node_id)
        while not self._stopping.is_set():
            try:
                if self._shapes_dirty.is_set():
                    self._shapes_dirty.clear()
                    self._refresh_shapes()
                with self._lock:
                    budget = self.sched.read_budget()
                    cpu_free = self.sched.available.get("CPU", 0.0) >= 1.0
                    # No known shape fits, but a new one might: wait on our node stream,
                    # where submitters announce new shapes; main unblocks us if room frees.
                    self._reader_parked = not budget and cpu_free
                if not budget and not cpu_free:
                    # Saturated: nothing to read until a task ends (or a shape poke is due).
                    if not self._capacity.wait(1.0):
                        self._take(client.xreadgroup(TASK_GROUP, self.node_id, {node_stream: ">"}, count=16))
                    self._capacity.clear()
                    continue
                streams = {node_stream: ">"}
                for shape in budget:
                    streams[self.keys.shape_stream(shape)] = ">"
                reply = client.xreadgroup(
                    TASK_GROUP, self.node_id, streams, count=max(budget.values(), default=16), block=1000
                )
                self._reader_parked = False
                self._take(reply)
            except redis.RedisError:
                if self._stopping.is_set():
                    return
                log.exception("reading task streams failed; retrying")
                time.sleep(0.5)
        client.close()

    def _capacity_freed(self) -> None:
        """Wake the reader: it may now pull more tasks."""
        self._capacity.set()
        if self._reader_parked:
            self._reader_parked = False
            try:
                self.gcs.r.client_unblock(self._reader_client_id)
            except redis.RedisError:
                pass

    def _take(self, reply: list) -> None:
        tasks: list[QueuedTask] = []
        prefix = self.keys.shape_stream("")
        for stream_name, entries in reply or []:
            stream = stream_name.decode()
            for entry_id, fields in entries:
                if b"poke" in fields:
                    self._shapes_dirty.set()
                    self.gcs.r.xack(stream, TASK_GROUP, entry_id)
                    self.gcs.r.xdel(stream, entry_id)
                    continue
                shape = stream[len(prefix):]
                tasks.append(QueuedTask(stream, entry_id, fields[b"s"], shape, res.parse_shape(shape)))
        if tasks:
            self._incoming.put(tasks)
            self._wake_w.send(b"t")

    # ------------------------------------------------------------------ main
    def _main_loop(self) -> None:
        next_beat = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + self.settings.heartbeat_interval_s
            conns = self.pool.by_conn()
            ready = wait([self._wake_r, *conns], timeout=max(0.0, next_beat - time.monotonic()))
            for item in ready:
                if item is self._wake_r:
                    self._drain_wake()
                else:
                    assert isinstance(item, Connection)
                    self._on_worker_message(conns[item])
            self._act()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                tasks = self._incoming.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self.sched.on_tasks(tasks)

    def _on_worker_message(self, handle: WorkerHandle) -> None:
        try:
            msg = handle.conn.recv()
        except (EOFError, OSError):
            self._on_worker_exit(handle)
            return
        kind = msg[0]
        freed = kind == "done" or (kind == "blocked" and bool(msg[1]))
        with self._lock:
            if kind == "ready":
                handle.ready = True
                self.sched.on_worker_ready(handle.worker_id)
            elif kind == "done":
                self.sched.on_task_done(handle.worker_id)
            elif kind == "blocked":
                if msg[1]:
                    self.sched.on_worker_blocked(handle.worker_id)
                else:
                    self.sched.on_worker_unblocked(handle.worker_id)
        if freed:
            self._capacity_freed()

    def _on_worker_exit(self, handle: WorkerHandle) -> None:
        self.pool.remove(handle.worker_id)
        with self._lock:
            if handle.ready:
                task = self.sched.on_worker_died(handle.worker_id)
            else:
                self.sched.on_worker_failed_to_start()
                task = None
        code = handle.proc.returncode
        if task is not None:
            self._task_crashed(task, f"worker pid={handle.proc.pid} exited with code {code}")
        self._capacity_freed()

    def _task_crashed(self, task: QueuedTask, why: str) -> None:
        spec = TaskSpec.decode(task.spec)
        with self.gcs.r.pipeline(transaction=False) as pipe:
            if spec.max_retries == -1 or spec.attempt < spec.max_retries:
                retry = spec._replace(attempt=spec.attempt + 1)
                pipe.xadd(task.stream, {b"s": retry.encode()})
            else:
                err = WorkerCrashedError(
                    f"The worker running {spec.function_name}() died ({why}) and "
                    f"max_retries={spec.max_retries} retries were used up."
                )
                record = rec.error_record(serialization.dumps(err))
                self.gcs.store_objects([(oid, record, spec.owner) for oid in spec.return_ids()], pipe)
            pipe.xack(task.stream, TASK_GROUP, task.entry_id)
            pipe.xdel(task.stream, task.entry_id)
            pipe.execute()

    def _act(self) -> None:
        with self._lock:
            dispatches = self.sched.dispatches()
            to_start = self.sched.workers_to_start()
        for d in dispatches:
            handle = self.pool.workers.get(d.worker)
            try:
                assert handle is not None
                handle.conn.send(("tasks", [(d.task.stream, d.task.entry_id, d.task.spec)]))
            except (AssertionError, OSError):
                if handle is not None:
                    self._on_worker_exit(handle)
        for _ in range(to_start):
            self._start_worker()
        self._reap_slow_starters()

    def _start_worker(self) -> None:
        self.pool.start()
        with self._lock:
            self.sched.on_worker_started()

    def _reap_slow_starters(self) -> None:
        limit = self.settings.worker_start_timeout_s
        now = time.monotonic()
        for handle in list(self.pool.workers.values()):
            if not handle.ready and now - handle.started > limit:
                log.error("worker %s did not start within %ss; replacing it", handle.worker_id, limit)
                self._on_worker_exit(handle)

    def _heartbeat(self) -> None:
        with self._lock:
            available = {k: round(v, 6) for k, v in self.sched.available.items()}
            load = len(self.sched.running) + len(self.sched.ready) + len(self.sched.overflow)
        try:
            self.gcs.heartbeat(self.node_id, self.settings.node_timeout_s, available, load)
        except redis.RedisError:
            log.exception("heartbeat failed")


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
    settings = Settings.model_validate_json(opts.settings_json)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
