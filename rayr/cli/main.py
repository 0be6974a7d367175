"""``rayr start | stop | status``: run cluster processes on this host and inspect clusters."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import sys
import threading
from typing import Any

import click
import psutil
import redis

from rayr import __version__, procs
from rayr.cli import launcher
from rayr.cli import memory as memory_mod
from rayr.cli import state as state_cli
from rayr.cli import status as status_mod
from rayr.cli.common import address_option, gcs_for, password_option, refuse_unfit_redis
from rayr.cli.jobs import job
from rayr.config import ConfigError, Settings, env_address, load_settings
from rayr.gcs import address as address_mod
from rayr.gcs.client import connect
from rayr.gcs.cluster import check, resolve
from rayr.node import LocalCluster, PortInUseError
from rayr.private_files import private_dir, write_private
from rayr.session import (
    remove_session_file,
    session_file_path,
    write_session_file,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _started_dir(settings: Settings) -> str:
    return os.path.join(settings.temp_dir, "started")


def _record_started(settings: Settings, cluster: LocalCluster, info: dict[str, Any]) -> str:
    """Remember the processes this invocation started (pid and create time, so a reused pid is
    never taken for one of them), so ``rayr stop`` can stop exactly them."""
    private_dir(_started_dir(settings))
    path = os.path.join(_started_dir(settings), f"{os.getpid()}-{secrets.token_hex(3)}.json")
    # "pids": what older versions of rayr read (to check the command line); "processes" wins here
    write_private(path, json.dumps({"processes": cluster.processes(), "pids": cluster.pids(),
                                    "session_dir": cluster.session_dir, **info}))
    return path


def _parse_resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise click.BadParameter(f"must be JSON, e.g. '{{\"GPU\": 1}}': {err}") from None
    if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
        raise click.BadParameter("must be a JSON object of resource name -> number")
    return {str(k): float(v) for k, v in value.items()}


@click.group()
# the version of the code that runs, not of whichever distribution metadata is installed
@click.version_option(version=__version__, prog_name="rayr")
def cli() -> None:
    """rayr: the Ray Core programming model on Redis."""


def _joinable(settings: Settings, address: str, flag: str = "--address",
              tls: dict[str, str | None] | None = None) -> str:
    """The URL (without password; with the TLS files in ``tls`` added, so every process
    started with it gets them) of the Redis at ``address``, once it answered us; ``settings``
    get the password that worked. A one-line error if it does not."""
    try:
        url, password = resolve(address, settings)
        if tls and any(tls.values()):
            url = address_mod.parse(url).with_options(**tls).url()
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=flag) from None
    settings.redis_password = password
    client = connect(url, password, cluster_name=settings.cluster_name, socket_connect_timeout=3)
    try:
        check(client, url, password)
    except ConnectionError as err:
        raise click.ClickException(str(err)) from None
    finally:
        client.close()
    return url


@cli.command()
@click.option("--head", is_flag=True, help="Start the head node: Redis (unless --redis-address), the "
                                           "monitor, the job supervisor and a raylet.")
@click.option("--address", help="Join the cluster whose Redis is at ADDRESS as a new node (default "
                                "without --head: RAYR_ADDRESS). HOST:PORT, redis[s]://[user@]host:port[/db] "
                                "or redis+sentinel://h1:26379,h2:26379/mymaster.")
@click.option("--redis-address", help="Head only: run the head on this Redis you already run (same "
                                      "forms as --address) instead of starting one; it is checked first.")
@click.option("--port", type=int, help="Head only: port of the Redis it starts (default 6379); refused "
                                       "if anything listens there.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Interface Redis listens on (head only); beyond loopback a password is required.")
@password_option
@click.option("--no-redis-password", is_flag=True,
              help="Head only, loopback only: no Redis password. Every local user can then run code "
                   "as you through the cluster's Redis.")
@click.option("--redis-ca-cert", type=click.Path(exists=True, dir_okay=False),
              help="TLS (rediss://): the CA certificate that signed the Redis server's.")
@click.option("--redis-client-cert", type=click.Path(exists=True, dir_okay=False),
              help="TLS (rediss://): this host's client certificate, for a Redis that requires one.")
@click.option("--redis-client-key", type=click.Path(exists=True, dir_okay=False),
              help="TLS (rediss://): the client certificate's private key.")
@click.option("--node-ip-address", help="The address this node reports (rayr status, the node:<ip> "
                                        "resource); default: this host's on the route to Redis.")
@click.option("--block", is_flag=True, help="Stay in the foreground and stop this node's processes on "
                                            "SIGTERM or Ctrl-C (a container's main process).")
@click.option("--cluster-name", help="The cluster's key prefix in Redis (default: RAYR_CLUSTER_NAME, "
                                     "else 'default'); clusters sharing one Redis need distinct names.")
@click.option("--num-cpus", type=float)
@click.option("--num-gpus", type=float)
@click.option("--resources", help='Custom resources as JSON, e.g. \'{"special": 2}\'.')
@click.option("--object-store-memory", type=int, help="Object store capacity in bytes.")
@click.option("--object-store-backend", help="Object store backend name (default: shm).")
@click.option("--object-spilling-directory",
              help="Where full object stores spill (default: <temp-dir>/spill).")
@click.option("--temp-dir", help="Where sessions and logs live (default: /tmp/rayr-sessions).")
@click.option("--redis-persist", is_flag=True,
              help="Head only: Redis keeps an append-only file, so restarting it brings the cluster back.")
@click.option("--include-dashboard", type=bool, default=True, show_default=True,
              help="Head only: serve the dashboard (web pages, /api/, Prometheus /metrics).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="Head only: the dashboard's interface; beyond loopback it requires a token.")
@click.option("--dashboard-port", type=int,
              help="Head only: the dashboard's port (default: 8265, or the next free one).")
@click.option("--metrics-export-port", type=int,
              help="Head only: also serve Prometheus /metrics alone on this port.")
def start(head: bool, address: str | None, redis_address: str | None, port: int | None, bind: str,
          redis_password: str | None, no_redis_password: bool, cluster_name: str | None,
          temp_dir: str | None, redis_persist: bool, node_ip_address: str | None, block: bool,
          **node: Any) -> None:
    """Start rayr processes on this host (they keep running after this command exits)."""
    address = address or (None if head else env_address())
    tls = {"ssl_ca_certs": node.pop("redis_ca_cert"), "ssl_certfile": node.pop("redis_client_cert"),
           "ssl_keyfile": node.pop("redis_client_key")}
    if node_ip_address is not None:
        try:
            node_ip_address = str(ipaddress.ip_address(node_ip_address))
        except ValueError:
            raise click.BadParameter(f"{node_ip_address!r} is not an IP address, e.g. 10.0.0.12",
                                     param_hint="--node-ip-address") from None
    _check_start_flags(head, address, redis_address, port, bind, no_redis_password, redis_persist)
    try:
        settings = load_settings({
            "temp_dir": temp_dir,
            "redis_password": redis_password,
            "generate_redis_password": False if no_redis_password else None,
            "cluster_name": cluster_name,
            "object_store_backend": node.pop("object_store_backend"),
            "object_store_memory": node["object_store_memory"],
            "object_spilling_directory": node.pop("object_spilling_directory"),
            **{name: node.pop(name) for name in DASHBOARD_OPTIONS},
        })
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    if no_redis_password and settings.redis_password:
        raise click.UsageError("--no-redis-password contradicts the password given "
                               "(--redis-password or RAYR_REDIS_PASSWORD): drop one.")
    private_dir(settings.temp_dir)
    node["resources"] = _parse_resources(node["resources"])
    if head:
        if redis_address:
            redis_address = _joinable(settings, redis_address, "--redis-address", tls)
        elif any(tls.values()):
            raise click.UsageError("--redis-ca-cert / --redis-client-cert / --redis-client-key are for a "
                                   "TLS Redis you run (--redis-address rediss://...); the Redis a head "
                                   "starts itself listens without TLS.")
        cluster, node_id = _start_head(settings, redis_address, port or 6379, bind, redis_persist, node,
                                       node_ip_address)
    else:
        assert address is not None
        url = _joinable(settings, address, tls=tls)
        cluster = LocalCluster.new_session(settings, daemon=True, external_redis_url=url,
                                           node_ip_address=node_ip_address)
        try:
            node_id = cluster.add_node(**node)
        except Exception as err:
            cluster.shutdown()
            raise click.ClickException(f"could not start the node: {err}") from None
    record = _record_started(settings, cluster, {"address": cluster.redis_url, "node_id": node_id})
    click.echo(f"rayr node {node_id} started on {cluster.node_ip}; cluster address {cluster.redis_url}")
    if head:
        _print_head_help(settings, cluster, bind, redis_persist)
    if block:
        _block(settings, record, cluster, head)


DASHBOARD_OPTIONS = ("include_dashboard", "dashboard_host", "dashboard_port", "metrics_export_port")


def _check_start_flags(head: bool, address: str | None, redis_address: str | None, port: int | None,
                       bind: str, no_redis_password: bool, redis_persist: bool) -> None:
    if head == bool(address):
        raise click.UsageError("Give exactly one of --head or --address ADDRESS (or set RAYR_ADDRESS).")
    if redis_address and not head:
        raise click.UsageError("--redis-address is for a head (--head); a node joins with --address.")
    if redis_address and (port is not None or redis_persist or no_redis_password):
        raise click.UsageError("--port, --redis-persist and --no-redis-password configure a Redis the head "
                               "starts; with --redis-address it starts none: drop them.")
    if no_redis_password and not (head and bind in LOOPBACK):
        raise click.UsageError("--no-redis-password is for a head on loopback (--head, --bind 127.0.0.1): "
                               "beyond loopback anyone who reaches the port could run code as you.")


def _start_head(settings: Settings, redis_address: str | None, port: int, bind: str, redis_persist: bool,
                node: dict[str, Any], node_ip_address: str | None) -> tuple[LocalCluster, str]:
    """The head's processes (and its Redis, without ``redis_address``); recorded in the session file."""
    url = redis_address  # checked by _joinable: no password in it
    if url:
        refuse_unfit_redis(settings, url)
    cluster = LocalCluster.new_session(settings, daemon=True, port=port, bind=bind, job_supervisor=True,
                                       redis_persist=redis_persist, external_redis_url=url,
                                       node_ip_address=node_ip_address)
    try:
        node_id = cluster.start_head(**node)
    except PortInUseError as err:
        cluster.shutdown()
        host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
        raise click.ClickException(f"{err}: choose a free port with --port, or run the head on the Redis "
                                   f"already there with --redis-address redis://{host}:{port}") from None
    except Exception as err:
        cluster.shutdown()
        raise click.ClickException(f"could not start the head node: {err}") from None
    # the generated password, if start_head made one
    write_session_file(settings, cluster.redis_url, settings.redis_password, cluster.session_dir)
    return cluster, node_id


def _print_head_help(settings: Settings, cluster: LocalCluster, bind: str, redis_persist: bool) -> None:
    if cluster.external_redis_url:
        join = cluster.external_redis_url
    else:
        host = bind if bind not in ("0.0.0.0", "::") else "<this host's address>"
        join = f"{host}:{cluster.port}"
    click.echo(f"  Add a node:    rayr start --address {join}")
    if settings.redis_password:
        # never printed: terminals get logged and shared; the session file is this user's only
        click.echo(f"  Redis password: in {session_file_path(settings)} (field \"password\", "
                   "readable by you only); found there by rayr on this host, give it to other "
                   "hosts as RAYR_REDIS_PASSWORD")
    else:
        click.echo("  Redis password: none (--no-redis-password): every local user can run "
                   "code as you through this cluster")
    _echo_dashboard(cluster)
    click.echo("  Connect:       rayr.init()  (or rayr.init(address='auto'))")
    click.echo("  Submit a job:  rayr job submit --working-dir . -- python script.py")
    click.echo("  Stop:          rayr stop")
    if redis_persist:
        assert cluster.redis_proc is not None
        args = cluster.redis_proc.args
        command = " ".join(str(a) for a in args) if isinstance(args, list) else str(args)
        click.echo(f"  Redis persists to {cluster.session_dir}/appendonlydir; if it stops, start it "
                   f"again with:\n    {command}")


def _echo_dashboard(cluster: LocalCluster) -> None:
    if cluster.dashboard_url:
        click.echo(f"  Dashboard:     {cluster.dashboard_url}")
    if cluster.metrics_url:
        click.echo(f"  Metrics:       {cluster.metrics_url}  (Prometheus)")
    token = cluster.settings.dashboard_token
    if token and cluster.dashboard_token_file:
        # shown once, here: it was just made, and only whoever started the head needs it
        click.echo(f"  Dashboard token (also in {cluster.dashboard_token_file}, readable by you only):\n"
                   f"    {token}\n  Open {cluster.dashboard_url or cluster.metrics_url}/?token=<token> once "
                   "in a browser, or send 'Authorization: Bearer <token>'")


# `rayr stop` stops every record's processes a phase at a time, each phase all at once: raylets
# (and job supervisors) clear their stores and record their jobs' ends while Redis is up, then
# the monitors, then Redis
STOP_PHASES = (("raylet", "supervisor"), ("monitor", "dashboard"), ("redis",))


def _role_of(proc: psutil.Process) -> str:
    """The role of a process in a record written before records named roles."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "raylet"
    if "redis-server" in cmd or "valkey-server" in cmd:
        return "redis"
    return "monitor" if "rayr.monitor" in cmd else "raylet"


def _recorded_processes(record: dict[str, Any]) -> list[tuple[str, psutil.Process]]:
    """(role, process) of each process the record names that still runs."""
    entries = record.get("processes")
    if entries is None:  # an older record: pids only
        entries = [{"pid": pid} for pid in record.get("pids", [])]
    out = []
    for entry in entries:
        proc = procs.recorded_process(int(entry["pid"]), entry.get("create_time"))
        if proc is not None:
            out.append((entry.get("role") or _role_of(proc), proc))
    return out


def _stop_records(records: list[tuple[str, dict[str, Any]]]) -> int:
    """Stop the processes the records name (a phase at a time), remove their sessions and
    the records; how many were running."""
    import shutil

    running = [entry for _, record in records for entry in _recorded_processes(record)]
    for roles in STOP_PHASES:
        procs.stop_all([proc for role, proc in running if role in roles], timeout=10)
    for path, record in records:
        shutil.rmtree(record.get("session_dir", ""), ignore_errors=True)
        os.unlink(path)
    return len(running)


def _block(settings: Settings, record_path: str, cluster: LocalCluster, head: bool) -> None:
    """Stay in the foreground until SIGTERM or SIGINT (or until this node's raylet exits),
    then stop what this command started: what a container's main process must do."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    raylets = list(cluster.raylets.values())
    died = False
    while not stopping.wait(1.0):
        if any(proc.poll() is not None for proc in raylets):
            click.echo("rayr: the node's raylet exited; stopping this node", err=True)
            died = True
            break
    with open(record_path) as f:
        record = json.load(f)
    stopped = _stop_records([(record_path, record)])
    if head:
        remove_session_file(settings, cluster.redis_url)
    click.echo(f"Stopped {stopped} rayr process(es).")
    sys.exit(1 if died else 0)


@cli.command()
@click.option("--temp-dir", help="Where sessions live (default: /tmp/rayr-sessions).")
def stop(temp_dir: str | None) -> None:
    """Stop every rayr process that ``rayr start`` started on this host."""
    settings = load_settings({"temp_dir": temp_dir})
    directory = _started_dir(settings)
    records = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    records.append((path, json.load(f)))
            except (OSError, ValueError):
                os.unlink(path)
    stopped = _stop_records(records)
    remove_session_file(settings)
    from rayr.object_store.orphans import reclaim_orphans, store_directories

    reclaim_orphans(store_directories(settings))  # stores of raylets that died (SIGKILL, OOM)
    click.echo(f"Stopped {stopped} rayr process(es).")


@cli.command()
@address_option
@password_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True, help="Objects to list.")
def memory(address: str | None, redis_password: str | None, fmt: str, limit: int) -> None:
    """Show object-store use per node and the largest objects."""
    gcs = gcs_for(address, redis_password)
    try:
        data = memory_mod.collect(gcs, limit)
    except redis.RedisError as err:
        click.echo(f"Cannot reach the cluster: {err}", err=True)
        sys.exit(1)
    click.echo(memory_mod.to_json(data) if fmt == "json" else memory_mod.render(data))


@cli.command()
@address_option
@password_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(address: str | None, redis_password: str | None, fmt: str) -> None:
    """Show nodes, resource usage and pending demand."""
    gcs = gcs_for(address, redis_password)
    try:
        data = status_mod.collect(gcs)
    except redis.RedisError as err:
        click.echo(f"Cannot reach the cluster: {err}", err=True)
        sys.exit(1)
    click.echo(json.dumps(data, indent=2) if fmt == "json" else status_mod.render(data))


for _command in launcher.COMMANDS:  # rayr up / down / exec / submit / get-head-ip
    cli.add_command(_command)


cli.add_command(job)
for _command in state_cli.COMMANDS:  # rayr list / summary / get
    cli.add_command(_command)

if __name__ == "__main__":
    cli()
