"""Where worker nodes come from: one small interface, a ``local`` and an ``ssh`` provider.

A provider keeps the nodes it started in ``<state dir>/nodes.json`` (per cluster name, under a
file lock), so the autoscaler in the head monitor, a restarted monitor and ``rayr down`` all see
the same list.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from rayr import procs
from rayr.autoscaler.config import ClusterConfig, node_resources
from rayr.config import Settings

STARTED_RE = re.compile(r"rayr node ([0-9a-f]{32}) started")


@dataclass
class ProviderNode:
    """A node a provider started (or is starting)."""

    provider_id: str
    node_type: str
    launch_time: float
    rayr_node_id: str = ""  # "" until known (ssh: once `rayr start` printed it)
    pid: int = 0  # local provider: the raylet's pid
    # local provider: when that pid's process started, so a reused pid is never taken for it
    # (None in records written before rayr kept it: then the node id on its command line)
    create_time: float | None = None
    host: str = ""  # ssh provider: the host
    failed: str = ""  # why it could not start (then the autoscaler terminates it)


def state_dir(temp_dir: str, cluster_name: str) -> str:
    """Where the launcher and the providers keep one cluster's state on this host."""
    return os.path.join(temp_dir, "clusters", cluster_name)


class NodeProvider(ABC):
    """Starts and stops worker nodes of a cluster and lists the ones it runs."""

    def __init__(self, cfg: ClusterConfig, state: str) -> None:
        self.cfg = cfg
        self.state = state
        os.makedirs(state, exist_ok=True)
        self._path = os.path.join(state, "nodes.json")

    # ---------------------------------------------------------------- state file
    @contextmanager
    def _nodes(self) -> Iterator[dict[str, ProviderNode]]:
        """The node list, locked for a read-modify-write."""
        with open(self._path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self._path) as f:
                    raw = json.load(f)
            except (OSError, ValueError):
                raw = {}
            nodes = {k: ProviderNode(**v) for k, v in raw.items()}
            yield nodes
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({k: asdict(v) for k, v in nodes.items()}, f)
            os.replace(tmp, self._path)

    def non_terminated_nodes(self) -> list[ProviderNode]:
        """The nodes started and not stopped; nodes whose processes are gone are forgotten."""
        with self._nodes() as nodes:
            for key in [k for k, n in nodes.items() if not self._exists(n)]:
                del nodes[key]
            return list(nodes.values())

    def terminate_all(self) -> int:
        """Stop every node this provider started; returns how many."""
        nodes = self.non_terminated_nodes()
        for node in nodes:
            self.terminate_node(node.provider_id)
        return len(nodes)

    # ---------------------------------------------------------------- per provider
    @abstractmethod
    def create_node(self, node_type: str, count: int) -> list[str]:
        """Start ``count`` nodes of ``node_type`` (without waiting for them); their provider ids."""

    @abstractmethod
    def terminate_node(self, provider_id: str) -> None:
        """Stop one node and forget it."""

    def _exists(self, node: ProviderNode) -> bool:
        return True


class LocalNodeProvider(NodeProvider):
    """Each worker node is a raylet process on this host with its type's resources."""

    def __init__(self, cfg: ClusterConfig, state: str, settings: Settings, redis_url: str,
                 session_dir: str) -> None:
        super().__init__(cfg, state)
        from rayr.node import LocalCluster

        # daemons: the nodes outlive a monitor restart; `rayr down` stops them by pid
        self._cluster = LocalCluster(settings=settings, session_dir=session_dir, daemon=True,
                                     external_redis_url=redis_url)

    def create_node(self, node_type: str, count: int) -> list[str]:
        resources = node_resources(self.cfg.available_node_types[node_type])
        num_cpus = resources.pop("CPU")
        num_gpus = resources.pop("GPU", None)
        store = resources.pop("object_store_memory", None)
        created = []
        for _ in range(count):
            node_id = self._cluster.add_node(
                wait=False, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                object_store_memory=int(store) if store else None,
            )
            proc = self._cluster.raylets[node_id]
            with self._nodes() as nodes:
                nodes[node_id] = ProviderNode(node_id, node_type, time.time(), rayr_node_id=node_id,
                                              pid=proc.pid, create_time=procs.create_time(proc.pid))
            created.append(node_id)
        return created

    def terminate_node(self, provider_id: str) -> None:
        with self._nodes() as nodes:
            node = nodes.pop(provider_id, None)
        if node is None:
            return
        proc = self._cluster.raylets.pop(provider_id, None)
        if proc is not None:  # our child: stop and reap it
            procs.stop([proc], timeout=10)
        elif (raylet := _raylet_process(node)) is not None:  # started by an earlier monitor
            procs.stop_all([raylet], timeout=10)

    def _exists(self, node: ProviderNode) -> bool:
        proc = self._cluster.raylets.get(node.provider_id)
        if proc is not None:
            if proc.poll() is None:
                return True
            del self._cluster.raylets[node.provider_id]
            return False
        return _raylet_process(node) is not None


def _raylet_process(node: ProviderNode) -> psutil.Process | None:
    """The live raylet of ``node``: its recorded pid while that still names the process started
    for it (the same create time; for an older record, the node id on its command line)."""
    proc = procs.recorded_process(node.pid, node.create_time)
    if proc is None or node.create_time is not None:
        return proc
    try:
        return proc if node.provider_id in proc.cmdline() else None
    except psutil.Error:
        return None


# ------------------------------------------------------------------------ ssh
class SSH:
    """Runs commands on hosts with the ``ssh`` client (batch mode, a known_hosts of our own)."""

    def __init__(self, cfg: ClusterConfig, state: str) -> None:
        self.cfg = cfg
        self.known_hosts = os.path.join(state, "known_hosts")

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR"]
        if self.cfg.auth.ssh_private_key:
            opts += ["-i", os.path.expanduser(self.cfg.auth.ssh_private_key), "-o", "IdentitiesOnly=yes"]
        return opts

    def target(self, host: str) -> str:
        return f"{self.cfg.auth.ssh_user}@{host}"

    def run(self, host: str, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash on ``host``. It travels on ssh's stdin into a 0600 file there,
        not on a command line (it may export the Redis password, and every user of either host
        can read command lines); it runs with stdin from /dev/null, as before."""
        remote = 'f=$(mktemp) && cat > "$f" && bash "$f" </dev/null; rc=$?; rm -f "$f"; exit $rc'
        cmd = ["ssh", "-p", str(self.cfg.provider.ssh_port), *self.options(), self.target(host), remote]
        return subprocess.run(cmd, input=script, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def push_files(self, host: str, mounts: dict[str, str]) -> None:
        """Copy ``file_mounts`` (remote path: local path, as Ray writes them) to ``host``.

        Raises:
            RuntimeError: a copy failed (with scp's message).
        """
        for remote, local in mounts.items():
            parent = os.path.dirname(remote.rstrip("/")) or "."
            done = self.run(host, f"mkdir -p {shlex.quote(parent)}", timeout=60)
            if not done.returncode:
                done = self.copy(host, local, remote)
            if done.returncode:
                raise RuntimeError(f"copying {local} to {host}:{remote} failed: {done.stderr.strip()}")

    def copy(self, host: str, local: str, remote: str,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = ["scp", "-r", "-P", str(self.cfg.provider.ssh_port), *self.options(),
               os.path.expanduser(local), f"{self.target(host)}:{remote}"]
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)


def node_env(cfg: ClusterConfig, role: str, host: str, node_type: str, head_address: str,
             password: str | None) -> dict[str, str]:
    """The variables every command on a node sees (custom start commands use them)."""
    env = {
        "RAYR_TEMP_DIR": node_temp_dir(cfg, role, host),
        "RAYR_HEAD_ADDRESS": head_address,
        "RAYR_NODE_TYPE": node_type,
        "RAYR_NODE_RESOURCES": json.dumps(node_resources(cfg.available_node_types[node_type])),
    }
    if cfg.redis.address:  # an existing Redis: the head starts on it, under the file's name
        env["RAYR_REDIS_ADDRESS"] = head_address
        env["RAYR_CLUSTER_NAME"] = cfg.cluster_name
    if password:
        env["RAYR_REDIS_PASSWORD"] = password  # a rayr setting: `rayr start` picks it up
    else:  # the user turned the password off: a head started there must not make one up
        env["RAYR_GENERATE_REDIS_PASSWORD"] = "0"
    return env


def node_temp_dir(cfg: ClusterConfig, role: str, host: str) -> str:
    """One directory per node on its host, so `rayr stop` there stops exactly that node."""
    return f"{cfg.provider.remote_temp_dir}/{cfg.cluster_name}/{role}-{host}"


def start_command(cfg: ClusterConfig, node_type: str, head: bool, port: int | None = None) -> list[str]:
    """rayr's default start commands for a node of ``node_type``."""
    rayr = cfg.provider.rayr_command
    resources = node_resources(cfg.available_node_types[node_type])
    args = [f"--num-cpus={resources.pop('CPU'):g}"]
    if "GPU" in resources:
        args.append(f"--num-gpus={resources.pop('GPU'):g}")
    store = resources.pop("object_store_memory", None) or cfg.object_store.memory
    if store:
        args.append(f"--object-store-memory={int(store)}")
    if resources:
        args.append("--resources=" + shlex.quote(json.dumps(resources)))
    args.append(f"--object-store-backend={cfg.object_store.backend}")
    if head and cfg.redis.address:
        args.append('--redis-address="$RAYR_REDIS_ADDRESS"')
    elif head:
        args += [f"--port={port}", f"--bind={cfg.provider.head_ip}"]
    else:
        args.append('--address="$RAYR_HEAD_ADDRESS"')
    return [f"{rayr} stop", f"{rayr} start {'--head ' if head else ''}" + " ".join(args)]


def node_script(env: dict[str, str], commands: list[str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return "set -e\n" + exports + 'mkdir -p "$RAYR_TEMP_DIR"\n' + "\n".join(commands) + "\n"


class SSHNodeProvider(NodeProvider):
    """Worker nodes on the configured ``worker_ips``, one node per host, set up and started over
    ssh; a launch runs in a thread so the monitor's loop never waits for ssh."""

    def __init__(self, cfg: ClusterConfig, state: str, head_address: str, password: str | None) -> None:
        super().__init__(cfg, state)
        self.ssh = SSH(cfg, state)
        self.head_address = head_address
        self.password = password
        self._threads: list[threading.Thread] = []

    def create_node(self, node_type: str, count: int) -> list[str]:
        created = []
        with self._nodes() as nodes:
            used = {n.host for n in nodes.values()}
            free = [h for h in self.cfg.provider.worker_ips if h not in used]
            for host in free[:count]:
                nodes[host] = ProviderNode(host, node_type, time.time(), host=host)
                created.append(host)
        for host in created:
            thread = threading.Thread(target=self._start, args=(host, node_type), daemon=True,
                                      name=f"ssh-start-{host}")
            thread.start()
            self._threads.append(thread)
        return created

    def worker_commands(self, node_type: str) -> list[str]:
        cfg = self.cfg
        start = cfg.worker_start_rayr_commands or start_command(cfg, node_type, head=False)
        return [*cfg.setup_commands, *cfg.worker_setup_commands,
                *cfg.available_node_types[node_type].worker_setup_commands, *start]

    def _start(self, host: str, node_type: str) -> None:
        env = node_env(self.cfg, "worker", host, node_type, self.head_address, self.password)
        try:
            self.ssh.push_files(host, self.cfg.file_mounts)
            done = self.ssh.run(host, node_script(env, self.worker_commands(node_type)))
            found = STARTED_RE.search(done.stdout)
            if done.returncode or not found:
                raise RuntimeError(f"starting rayr on {host} failed (exit {done.returncode}): "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}")
            update = {"rayr_node_id": found.group(1)}
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            update = {"failed": str(err)}
        with self._nodes() as nodes:
            if host in nodes:
                for key, value in update.items():
                    setattr(nodes[host], key, value)

    def terminate_node(self, provider_id: str) -> None:
        with self._nodes() as nodes:
            node = nodes.pop(provider_id, None)
        host = node.host if node else provider_id
        self.stop_host("worker", host)

    def stop_host(self, role: str, host: str) -> bool:
        """`rayr stop` in the node's own directory on ``host``; True if ssh succeeded."""
        script = f"RAYR_TEMP_DIR={shlex.quote(node_temp_dir(self.cfg, role, host))} " \
                 f"{self.cfg.provider.rayr_command} stop"
        try:
            return self.ssh.run(host, script, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def join(self, timeout: float) -> None:
        """Wait for launches in flight (tests, `rayr up`)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def provider_for(cfg: ClusterConfig, settings: Settings, info: dict[str, Any]) -> NodeProvider:
    """The provider of ``cfg``; ``info`` is what `rayr up` published (address, password, session)."""
    state = state_dir(settings.temp_dir, cfg.cluster_name)
    if cfg.provider.type == "local":
        return LocalNodeProvider(cfg, state, settings, info["redis_url"], info["session_dir"])
    return SSHNodeProvider(cfg, state, info["head_address"], info.get("password"))
