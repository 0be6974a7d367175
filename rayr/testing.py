"""Helpers for tests and for users who test their own rayr programs.

- :func:`redis_server` yields the URL of a real redis-server on a free loopback port
  (or ``RAYR_TEST_REDIS_URL`` when set) and stops it afterwards.
- :class:`Cluster` starts several raylets against one Redis (each its own node, sharing
  nothing but Redis) under a unique cluster name, and removes its keys at the end.
- :func:`run_cli` runs a ``rayr`` CLI command in a fresh interpreter.
- :func:`wait_node_dead` waits until the connected cluster has declared a node dead.
- :class:`SimulatedNodes` registers and heartbeats many light simulated raylets.
- :func:`run_with_tmpfs` runs a Python script with small private filesystems mounted (a
  full /dev/shm, a full spill disk) where only it sees them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rayr import procs
from rayr.config import Settings, env_test_redis_url
from rayr.gcs.client import GcsClient, connect, connect_as, on_tag
from rayr.gcs.rows import NodeInfo
from rayr.keys import TASK_GROUP, Keys
from rayr.node import LocalCluster, free_port, start_redis


def run_cli(
    *args: str, env: dict[str, str], check: bool = True, timeout: float = 120, cwd: str | None = None
) -> subprocess.CompletedProcess:
    """``rayr ARGS...`` with ``env``; with ``check`` a non-zero exit fails with its output."""
    out = subprocess.run([sys.executable, "-m", "rayr.cli.main", *args], capture_output=True,
                         text=True, env=env, timeout=timeout, cwd=cwd)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL: ``RAYR_TEST_REDIS_URL`` if set, else a fresh local redis-server."""
    external = env_test_redis_url()
    if external:
        yield external
        return
    workdir = tempfile.mkdtemp(prefix="rayr-redis-")
    port = free_port()
    proc = start_redis(port, workdir=workdir)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        procs.stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


class Cluster:
    """A multi-node cluster on this host for tests: one raylet per node, one Redis.

    Example::

        with redis_server() as url:
            cluster = Cluster(url)
            cluster.add_node(num_cpus=2)
            cluster.add_node(num_cpus=2, resources={"special": 1})
            rayr.init(address=cluster.address, _cluster_name=cluster.name)
            ...
            rayr.shutdown()
            cluster.shutdown()
    """

    def __init__(
        self, redis_url: str, *, name: str | None = None, job_supervisor: bool = False, **settings: Any
    ) -> None:
        self.name = name or f"test-{os.urandom(4).hex()}"
        self.address = redis_url
        self._own_temp = "temp_dir" not in settings
        temp_dir = settings.pop("temp_dir", None) or tempfile.mkdtemp(prefix="rayr-test-")
        # a dashboard only where a test looks at it: each costs a process and its imports
        settings.setdefault("include_dashboard", False)
        self.settings = Settings(cluster_name=self.name, temp_dir=temp_dir, **settings)
        # job_supervisor: the head also runs submitted jobs (JobSubmissionClient)
        self._local = LocalCluster.new_session(self.settings, external_redis_url=redis_url,
                                               job_supervisor=job_supervisor)
        self._monitor_started = False

    @property
    def session_dir(self) -> str:
        return self._local.session_dir

    def add_node(self, **kwargs: Any) -> str:
        """Start a raylet (the first one also starts the monitor); returns its node id."""
        if not self._monitor_started:
            self._monitor_started = True
            return self._local.start_head(**kwargs)
        return self._local.add_node(**kwargs)

    def remove_node(self, node_id: str, *, graceful: bool = True) -> None:
        import signal

        self._local.kill_node(node_id, signal.SIGTERM if graceful else signal.SIGKILL)

    def pids(self) -> list[int]:
        return self._local.pids()

    def shutdown(self) -> None:
        self._local.shutdown()
        client = connect_as(self.address, self.settings)
        try:
            keys = list(client.scan_iter(match=f"rayr:{{{self.name}}}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            # spread keys one at a time: on a Redis Cluster they are in other slots (those on
            # other masters expire or stay behind with the cluster's Redis)
            spread = list(client.scan_iter(match=Keys(self.name).spread_pattern, count=1000))
            with client.pipeline(transaction=False) as p:
                for key in spread:
                    p.delete(key)
                p.execute()
        finally:
            client.close()
        if self._own_temp:
            shutil.rmtree(self.settings.temp_dir, ignore_errors=True)


def tmpfs_unavailable() -> str | None:
    """Why :func:`run_with_tmpfs` cannot work here (no root, no mount namespaces), or None."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}"
    return None


def run_with_tmpfs(
    script: str, mounts: dict[str, int], *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run Python ``script`` (in a fresh interpreter, as a file) in a mount namespace of its
    own, with a tmpfs of ``mounts[path]`` bytes on each existing directory ``path``.

    Only the script and its children see the mounts; they vanish when the last of those
    processes exits, so nothing is left mounted however the script ends. Needs root (or a
    user namespace); check :func:`tmpfs_unavailable` first.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    mount = " && ".join(
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(path)}" for path, size in mounts.items()
    )
    command = f"{mount} && exec {shlex.quote(sys.executable)} -P {shlex.quote(f.name)}"
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                              capture_output=True, text=True, env=env, timeout=timeout)
    finally:
        os.unlink(f.name)


def wait_node_dead(node_id: str, timeout: float = 30) -> None:
    """Wait until the cluster this process is connected to has declared ``node_id`` dead."""
    import time

    import rayr

    deadline = time.time() + timeout
    while any(n["NodeID"] == node_id and n["Alive"] for n in rayr.nodes()):
        if time.time() > deadline:
            raise TimeoutError(f"node {node_id} was not declared dead within {timeout}s")
        time.sleep(0.05)


SIM_RESOURCES = {"sim_only": 1.0}  # no CPU: SPREAD and node affinity never pick them


class SimulatedNodes:
    """``count`` light simulated raylets, for scale tests and benchmarks: each registers in the
    node table, heartbeats and blocks in the raylet's two reads (its node stream, a task
    stream) through rayr's own client code (``GcsClient``), so Redis and the monitor see the
    traffic of that many idle nodes without their processes. They offer only ``sim_only``, so
    no real task lands on them. ``close()`` stops them and marks them dead."""

    def __init__(self, url: str, password: str | None, cluster: str, count: int, interval_s: float,
                 timeout_s: float) -> None:
        self.keys = Keys(cluster)
        self.gcs = GcsClient(connect(url, password, cluster_name=cluster), self.keys)
        self.url, self.password, self.cluster = url, password, cluster
        self.ids = [os.urandom(16).hex() for _ in range(count)]
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for node in self.ids:
            self.gcs.ensure_group(self.keys.node_stream(node))
            self.gcs.register_node(NodeInfo(
                node_id=node, host="127.0.0.1", hostname=f"sim-{node[:6]}", pid=0, is_head=False,
                resources_total=dict(SIM_RESOURCES), resources_available=dict(SIM_RESOURCES),
                store_backend="shm", store_namespace=f"sim-{node[:16]}", store_options={},
                session_dir="/nonexistent", start_time=time.time()), ttl_s=self.timeout_s)
        # heartbeats: a few threads share the nodes, each beat is the real GcsClient call
        per = max(1, len(self.ids) // 4)
        for i in range(0, len(self.ids), per):
            self._spawn(self._beat, self.ids[i:i + per])
        for node in self.ids:  # each node's control-stream read and task-stream read, blocked
            self._spawn(self._read, node, self.keys.node_stream(node))
            self._spawn(self._read, node, self.keys.task_stream("sim_only=1", "", 0))

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _beat(self, nodes: list[str]) -> None:
        gcs = GcsClient(connect(self.url, self.password, cluster_name=self.cluster), self.keys)
        while not self.stop.is_set():
            start = time.monotonic()
            for node in nodes:
                gcs.heartbeat(node, self.timeout_s, SIM_RESOURCES, 0)
            self.stop.wait(max(0.0, self.interval_s - (time.monotonic() - start)))

    def _read(self, node: str, stream: str) -> None:
        tag = self.keys.tag_of(stream)
        client: Any = connect(self.url, self.password, cluster_name=self.cluster,
                              single_connection_client=tag is None)
        if tag is not None:  # on a Redis Cluster: one connection to the master of the stream's tag
            client = on_tag(client, self.keys, tag, single_connection=True)
        try:
            client.xgroup_create(stream, TASK_GROUP, id="0", mkstream=True)
        except Exception:  # the group exists
            pass
        while not self.stop.is_set():
            try:
                client.xreadgroup(TASK_GROUP, node, {stream: ">"}, count=64, block=1000)
            except Exception:
                return
        client.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=3)
        for node in self.ids:
            self.gcs.set_node_state(node, "DEAD", "the benchmark ended")
