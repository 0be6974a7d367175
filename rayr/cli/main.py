"""``rayr start | stop | status``: run cluster processes on this host and inspect clusters."""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import Any

import click
import psutil
import redis

from rayr import __version__, procs
from rayr.cli import launcher
from rayr.cli import memory as memory_mod
from rayr.cli import state as state_cli
from rayr.cli import status as status_mod
from rayr.cli.common import gcs_for
from rayr.cli.jobs import job
from rayr.config import ConfigError, Settings, load_settings
from rayr.gcs.client import connect, normalize_address
from rayr.node import LocalCluster
from rayr.private_files import private_dir, write_private
from rayr.session import (
    recorded_password,
    remove_session_file,
    session_file_path,
    write_session_file,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PASSWORD_HELP = "Redis password (default: RAYR_REDIS_PASSWORD, then this host's session file)."


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


def _joinable(settings: Settings, address: str) -> str:
    """The URL of the cluster at ``address``, once its Redis answered us (``settings`` get the
    password that worked); a clear error if it does not."""
    try:
        url = normalize_address(address)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--address") from None
    # a head this user started on this host: its password is in the session file
    password = settings.redis_password or recorded_password(settings, url)
    settings.redis_password = password
    client = connect(url, password, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.AuthenticationError as err:
        hint = ("wrong --redis-password / RAYR_REDIS_PASSWORD" if password
                else "it needs --redis-password or RAYR_REDIS_PASSWORD")
        raise click.ClickException(f"the cluster's Redis at {url} refused us ({hint}): {err}") from None
    except redis.ResponseError as err:
        raise click.ClickException(f"the cluster's Redis at {url} refused us: {err}") from None
    except redis.RedisError as err:
        raise click.ClickException(f"cannot reach the cluster's Redis at {url}: {err}") from None
    finally:
        client.close()
    return url


@cli.command()
@click.option("--head", is_flag=True, help="Start the head node: Redis, the monitor and a raylet.")
@click.option("--address", help="Join the cluster whose Redis is at HOST:PORT as a new node.")
@click.option("--port", type=int, default=6379, show_default=True, help="Redis port (head only).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Interface Redis listens on (head only); beyond loopback a password is required.")
@click.option("--redis-password",
              help="Redis password (default: RAYR_REDIS_PASSWORD, else a generated one for --head, "
                   "else the one this host's session file records for --address). Prefer the "
                   "variable: every user can read a command line.")
@click.option("--no-redis-password", is_flag=True,
              help="Head only, loopback only: no Redis password. Every local user can then run code "
                   "as you through the cluster's Redis.")
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
def start(
    head: bool,
    address: str | None,
    port: int,
    bind: str,
    redis_password: str | None,
    no_redis_password: bool,
    num_cpus: float | None,
    num_gpus: float | None,
    resources: str | None,
    object_store_memory: int | None,
    object_store_backend: str | None,
    object_spilling_directory: str | None,
    temp_dir: str | None,
    redis_persist: bool,
    include_dashboard: bool,
    dashboard_host: str,
    dashboard_port: int | None,
    metrics_export_port: int | None,
) -> None:
    """Start rayr processes on this host (they keep running after this command exits)."""
    if head == bool(address):
        raise click.UsageError("Give exactly one of --head or --address HOST:PORT.")
    if no_redis_password and not (head and bind in LOOPBACK):
        raise click.UsageError("--no-redis-password is for a head on loopback (--head, --bind 127.0.0.1): "
                               "beyond loopback anyone who reaches the port could run code as you.")
    try:
        settings = load_settings({
            "temp_dir": temp_dir,
            "redis_password": redis_password,
            "generate_redis_password": False if no_redis_password else None,
            "object_store_backend": object_store_backend,
            "object_store_memory": object_store_memory,
            "object_spilling_directory": object_spilling_directory,
            "include_dashboard": include_dashboard,
            "dashboard_host": dashboard_host,
            "dashboard_port": dashboard_port,
            "metrics_export_port": metrics_export_port,
        })
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    if no_redis_password and settings.redis_password:
        raise click.UsageError("--no-redis-password contradicts the password given "
                               "(--redis-password or RAYR_REDIS_PASSWORD): drop one.")
    private_dir(settings.temp_dir)
    node_kwargs: dict[str, Any] = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "resources": _parse_resources(resources),
        "object_store_memory": object_store_memory,
    }
    if head:
        cluster = LocalCluster.new_session(settings, daemon=True, port=port, bind=bind,
                                           redis_persist=redis_persist, job_supervisor=True)
        try:
            node_id = cluster.start_head(**node_kwargs)
        except Exception as err:
            cluster.shutdown()
            raise click.ClickException(f"could not start the head node: {err}") from None
        url = cluster.redis_url
        # the generated password, if start_head made one
        write_session_file(settings, url, settings.redis_password, cluster.session_dir)
    else:
        assert address is not None
        url = _joinable(settings, address)
        cluster = LocalCluster.new_session(settings, daemon=True, external_redis_url=url)
        try:
            node_id = cluster.add_node(**node_kwargs)
        except Exception as err:
            cluster.shutdown()
            raise click.ClickException(f"could not start the node: {err}") from None
    _record_started(settings, cluster, {"address": url, "node_id": node_id})
    click.echo(f"rayr node {node_id} started; cluster address {url}")
    if head:
        host = bind if bind not in ("0.0.0.0", "::") else "<this host's address>"
        click.echo(f"  Add a node:    rayr start --address {host}:{cluster.port}")
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
    if "redis-server" in cmd:
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


@cli.command()
@click.option("--temp-dir", help="Where sessions live (default: /tmp/rayr-sessions).")
def stop(temp_dir: str | None) -> None:
    """Stop every rayr process that ``rayr start`` started on this host."""
    import shutil

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
    running = [entry for _, record in records for entry in _recorded_processes(record)]
    for roles in STOP_PHASES:
        procs.stop_all([proc for role, proc in running if role in roles], timeout=10)
    for path, record in records:
        shutil.rmtree(record.get("session_dir", ""), ignore_errors=True)
        os.unlink(path)
    stopped = len(running)
    remove_session_file(settings)
    from rayr.object_store.orphans import reclaim_orphans, store_directories

    reclaim_orphans(store_directories(settings))  # stores of raylets that died (SIGKILL, OOM)
    click.echo(f"Stopped {stopped} rayr process(es).")


@cli.command()
@click.option("--address", help="Cluster address (default: RAYR_ADDRESS, then this host's cluster).")
@click.option("--redis-password", help=PASSWORD_HELP)
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
@click.option("--address", help="Cluster address (default: RAYR_ADDRESS, then this host's cluster).")
@click.option("--redis-password", help=PASSWORD_HELP)
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
