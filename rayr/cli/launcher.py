"""``rayr up | down | exec | submit | get-head-ip``: clusters from a YAML file.

What `up` started is recorded in ``<temp_dir>/clusters/<cluster_name>/cluster.json`` (head
processes, address, password) beside the provider's ``nodes.json`` (worker nodes), so `down`
stops exactly that cluster. `up` on a running cluster restarts rayr on it (Ray's behaviour),
or with ``--no-restart`` leaves it running and only publishes the (possibly changed) config to
its autoscaler.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

import click
import redis

from rayr import procs
from rayr.autoscaler.autoscaler import config_key, publish_config
from rayr.autoscaler.config import (
    ClusterConfig,
    ClusterConfigError,
    json_schema,
    load_cluster_config,
    node_resources,
)
from rayr.autoscaler.node_provider import (
    SSH,
    LocalNodeProvider,
    SSHNodeProvider,
    node_env,
    node_script,
    node_temp_dir,
    start_command,
    state_dir,
)
from rayr.cli.common import refuse_unfit_redis
from rayr.config import ConfigError, Settings, load_settings
from rayr.gcs.address import parse
from rayr.gcs.client import GcsClient, connect
from rayr.keys import Keys
from rayr.private_files import private_dir, write_private
from rayr.session import remove_session_file, write_session_file

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADDRESS_RE = r"cluster address (\S+)"


def _load(path: str) -> ClusterConfig:
    try:
        return load_cluster_config(path)
    except ClusterConfigError as err:
        raise click.ClickException(str(err)) from None


def _settings(cfg: ClusterConfig) -> Settings:
    try:
        # on an existing Redis the YAML's name keys the cluster, so several can share it
        named = {"cluster_name": cfg.cluster_name} if cfg.redis.address else {}
        return load_settings({
            **named,
            "redis_password": cfg.redis.password,
            "object_store_backend": cfg.object_store.backend,
            "object_store_memory": cfg.object_store.memory,
            "object_spilling_directory": cfg.object_store.spilling_directory,
        })
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


def existing_redis(cfg: ClusterConfig) -> str:
    """The address of the existing Redis the cluster file names (checked when it was loaded)."""
    assert cfg.redis.address is not None
    return parse(cfg.redis.address).url()


def _record_path(settings: Settings, cfg: ClusterConfig) -> str:
    return os.path.join(state_dir(settings.temp_dir, cfg.cluster_name), "cluster.json")


def read_record(settings: Settings, cfg: ClusterConfig) -> dict[str, Any] | None:
    """What `up` recorded for this cluster name on this host, if anything."""
    try:
        with open(_record_path(settings, cfg)) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return None


def _write_record(settings: Settings, cfg: ClusterConfig, record: dict[str, Any]) -> None:
    path = _record_path(settings, cfg)
    private_dir(os.path.dirname(path))
    write_private(path, json.dumps(record))  # it holds the password


def _gcs(record: dict[str, Any]) -> GcsClient:
    name = record.get("key_prefix_name", "default")
    client = connect(record["redis_url"], record.get("password"), cluster_name=name, socket_connect_timeout=3)
    return GcsClient(client, Keys(name))


def _reachable(record: dict[str, Any]) -> bool:
    gcs = _gcs(record)
    try:
        return bool(gcs.r.ping())
    except redis.RedisError:
        return False
    finally:
        gcs.r.close()


def _wait_for_nodes(record: dict[str, Any], want: int, timeout: float) -> int:
    """Wait until ``want`` nodes are alive; returns how many are."""
    gcs = _gcs(record)
    deadline = time.monotonic() + timeout
    try:
        while True:
            alive = len(gcs.alive_nodes())
            if alive >= want or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)
    finally:
        gcs.r.close()


# ------------------------------------------------------------------------ local provider
def _up_local(cfg: ClusterConfig, settings: Settings) -> dict[str, Any]:
    from rayr.node import LocalCluster, free_port

    bind = cfg.provider.head_ip or "127.0.0.1"
    private_dir(settings.temp_dir)
    if cfg.redis.address:  # an existing Redis: checked as `rayr start --head` checks one
        url = existing_redis(cfg)
        refuse_unfit_redis(settings, url)
        cluster = LocalCluster.new_session(settings, daemon=True, external_redis_url=url)
    else:
        if bind not in LOOPBACK and not settings.redis_password:
            settings.redis_password = secrets.token_urlsafe(24)
        # on loopback start_head generates one (unless generate_redis_password is off)
        cluster = LocalCluster.new_session(settings, daemon=True, port=cfg.redis.port or free_port(),
                                           bind=bind)
    resources = node_resources(cfg.available_node_types[cfg.head_node_type])
    store = resources.pop("object_store_memory", None)
    try:
        cluster.start_head(num_cpus=resources.pop("CPU"), num_gpus=resources.pop("GPU", None),
                           resources=resources, object_store_memory=int(store) if store else None)
    except Exception as err:
        cluster.shutdown()
        raise click.ClickException(f"could not start the head node: {err}") from None
    head = next(iter(cluster.raylets.values()))
    assert cluster.monitor_proc is not None
    record = {
        "provider": "local",
        "key_prefix_name": settings.cluster_name,
        "redis_url": cluster.redis_url,
        "head_address": cluster.redis_url,
        "password": settings.redis_password,
        "session_dir": cluster.session_dir,
        # stopped in this order by `down`: the monitor first, so it launches nothing more
        "monitor_pid": cluster.monitor_proc.pid,
        "dashboard_pid": cluster.dashboard_proc.pid if cluster.dashboard_proc is not None else None,
        "dashboard_url": cluster.dashboard_url,
        "head_pids": [head.pid],
        "redis_pid": cluster.redis_proc.pid if cluster.redis_proc is not None else None,  # ours only
        # pid -> create time: `down` signals a pid only while it is still that process
        "create_times": {str(p["pid"]): p["create_time"] for p in cluster.processes()},
    }
    _write_record(settings, cfg, record)
    # so `rayr status`, `rayr.init()` and friends on this host find the cluster
    write_session_file(settings, cluster.redis_url, settings.redis_password, cluster.session_dir)
    return record


def _stop_recorded(record: dict[str, Any], pids: list[int]) -> int:
    """Stop those of ``pids`` that are still the processes `up` started, all at once."""
    created = record.get("create_times", {})  # absent in records of older versions
    running = [p for pid in pids
               if (p := procs.recorded_process(pid, created.get(str(pid)))) is not None]
    procs.stop_all(running, timeout=10)
    return len(running)


def _down_local(cfg: ClusterConfig, settings: Settings, record: dict[str, Any]) -> int:
    # first the monitor: it launches nothing more
    stopped = _stop_recorded(record, [p for p in (record["monitor_pid"], record.get("dashboard_pid")) if p])
    provider = LocalNodeProvider(cfg, state_dir(settings.temp_dir, cfg.cluster_name), settings,
                                 record["redis_url"], record["session_dir"])
    stopped += provider.terminate_all()
    stopped += _stop_recorded(record, record["head_pids"])  # raylets clear their stores, then Redis
    if record.get("redis_pid"):  # a Redis `up` started, not one it was given
        stopped += _stop_recorded(record, [record["redis_pid"]])
    shutil.rmtree(record["session_dir"], ignore_errors=True)
    remove_session_file(settings, record["redis_url"])
    return stopped


# ------------------------------------------------------------------------ ssh provider
def _up_ssh(cfg: ClusterConfig, settings: Settings) -> dict[str, Any]:
    import re

    state = state_dir(settings.temp_dir, cfg.cluster_name)
    os.makedirs(state, exist_ok=True)
    ssh = SSH(cfg, state)
    head = cfg.provider.head_ip
    assert head is not None
    port = cfg.redis.port or 6379
    password = cfg.redis.password
    url = existing_redis(cfg) if cfg.redis.address else f"redis://{head}:{port}"
    # the head generates none itself here: the workers must be told the one it uses
    if not password and not cfg.redis.address and (head not in LOOPBACK or settings.generate_redis_password):
        password = secrets.token_urlsafe(24)
    try:
        ssh.push_files(head, cfg.file_mounts)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    head_address = url if cfg.redis.address else f"{head}:{port}"
    env = node_env(cfg, "head", head, cfg.head_node_type, head_address, password)
    start = cfg.head_start_rayr_commands or start_command(cfg, cfg.head_node_type, head=True, port=port)
    commands = [*cfg.initialization_commands, *cfg.setup_commands, *cfg.head_setup_commands, *start]
    done = ssh.run(head, node_script(env, commands))
    found = re.search(ADDRESS_RE, done.stdout)
    if done.returncode or not found:
        raise click.ClickException(f"starting the head on {head} failed (exit {done.returncode}):\n"
                                   f"{(done.stderr or done.stdout).strip()[-2000:]}")
    record = {"provider": "ssh", "redis_url": url, "head_address": head_address, "password": password,
              "head_ip": head, "key_prefix_name": settings.cluster_name}
    _write_record(settings, cfg, record)
    return record


def _down_ssh(cfg: ClusterConfig, settings: Settings, record: dict[str, Any]) -> int:
    provider = SSHNodeProvider(cfg, state_dir(settings.temp_dir, cfg.cluster_name),
                               record["head_address"], record.get("password"))
    # the head first: its monitor (the autoscaler) must not start workers while they stop
    stopped = int(provider.stop_host("head", record["head_ip"]))
    for host in cfg.provider.worker_ips:
        stopped += int(provider.stop_host("worker", host))
    return stopped


# ------------------------------------------------------------------------ commands
def _publish(cfg: ClusterConfig, record: dict[str, Any]) -> None:
    gcs = _gcs(record)
    try:
        if cfg.redis.persistence:
            gcs.r.config_set("appendonly", "yes")
        publish_config(gcs, cfg, {k: record.get(k) for k in ("redis_url", "head_address", "password",
                                                             "session_dir")})
    except redis.RedisError as err:
        url = record["redis_url"]
        raise click.ClickException(f"cannot reach the cluster's Redis at {url}: {err}") from None
    finally:
        gcs.r.close()


def _teardown(cfg: ClusterConfig, settings: Settings, record: dict[str, Any]) -> int:
    try:
        gcs = _gcs(record)
        try:
            gcs.r.delete(config_key(gcs))
        finally:
            gcs.r.close()
    except redis.RedisError:
        pass
    stopped = (_down_local if record["provider"] == "local" else _down_ssh)(cfg, settings, record)
    shutil.rmtree(state_dir(settings.temp_dir, cfg.cluster_name), ignore_errors=True)
    return stopped


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-restart", is_flag=True, help="Leave a running cluster running (only update its config).")
@click.option("--print-schema", is_flag=True, help="Print the JSON schema of the cluster file and exit.")
@click.option("--timeout", type=float, default=120, show_default=True,
              help="Seconds to wait for the min_workers nodes to join.")
def up(config: str | None, yes: bool, no_restart: bool, print_schema: bool, timeout: float) -> None:
    """Start the cluster described by CONFIG (a YAML file), or update it."""
    if print_schema:
        click.echo(json.dumps(json_schema(), indent=2))
        return
    if not config:
        raise click.UsageError("Give the cluster's YAML file (or --print-schema).")
    cfg = _load(config)
    settings = _settings(cfg)
    record = read_record(settings, cfg)
    if record is not None:
        if _reachable(record) and no_restart:
            _publish(cfg, record)
            click.echo(f"Cluster {cfg.cluster_name} is running at {record['redis_url']}; "
                       "left it running (--no-restart) and updated its config.")
            return
        if _reachable(record) and not yes:
            click.confirm(f"Cluster {cfg.cluster_name} is running; restart it?", abort=True)
        _teardown(cfg, settings, record)
    record = (_up_local if cfg.provider.type == "local" else _up_ssh)(cfg, settings)
    _publish(cfg, record)
    want = 1 + sum(cfg.available_node_types[t].min_workers for t in cfg.worker_types())
    alive = _wait_for_nodes(record, want, timeout)
    click.echo(f"Cluster {cfg.cluster_name} is up at {record['redis_url']} ({alive} node(s); "
               f"{cfg.provider.type} provider).")
    if alive < want:
        click.echo(f"  Only {alive} of the {want} min_workers nodes joined within {timeout:g}s; "
                   "see `rayr status`.", err=True)
    if record.get("dashboard_url"):
        click.echo(f"  Dashboard: {record['dashboard_url']}")
    click.echo(f"  Status:  rayr exec {config} 'rayr status'")
    click.echo(f"  Submit:  rayr submit {config} script.py")
    click.echo(f"  Stop:    rayr down {config}")


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def down(config: str, yes: bool) -> None:
    """Stop every process of the cluster CONFIG describes (the head and all workers)."""
    cfg = _load(config)
    settings = _settings(cfg)
    record = read_record(settings, cfg)
    if record is None:
        click.echo(f"No cluster named {cfg.cluster_name} was started from this host.")
        return
    if not yes:
        click.confirm(f"Stop cluster {cfg.cluster_name}?", abort=True)
    stopped = _teardown(cfg, settings, record)
    click.echo(f"Cluster {cfg.cluster_name} is down ({stopped} process(es)/host(s) stopped).")


def _head_env(cfg: ClusterConfig, record: dict[str, Any]) -> dict[str, str]:
    env = {"RAYR_ADDRESS": record["head_address"]}
    if record.get("password"):
        env["RAYR_REDIS_PASSWORD"] = record["password"]
    return env


def _run_on_head(cfg: ClusterConfig, settings: Settings, command: str) -> int:
    record = read_record(settings, cfg)
    if record is None:
        raise click.ClickException(f"cluster {cfg.cluster_name} is not up (run `rayr up` first)")
    if record["provider"] == "local":
        done = subprocess.run(command, shell=True, env={**os.environ, **_head_env(cfg, record)}, check=False)
        return done.returncode
    head = record["head_ip"]
    env = {**node_env(cfg, "head", head, cfg.head_node_type, record["head_address"], record.get("password")),
           **_head_env(cfg, record)}
    result = SSH(cfg, state_dir(settings.temp_dir, cfg.cluster_name)).run(head, node_script(env, [command]))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True)
def exec_(config: str, command: tuple[str, ...]) -> None:
    """Run COMMAND (a shell command) on the head of CONFIG's cluster, connected to it."""
    cfg = _load(config)
    sys.exit(_run_on_head(cfg, _settings(cfg), " ".join(command)))


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1)
def submit(config: str, script: str, args: tuple[str, ...]) -> None:
    """Copy SCRIPT to the head of CONFIG's cluster and run it there with ARGS."""
    cfg = _load(config)
    settings = _settings(cfg)
    quoted = " ".join(shlex.quote(a) for a in args)
    if cfg.provider.type == "local":
        command = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(script))} {quoted}"
    else:
        record = read_record(settings, cfg)
        if record is None:
            raise click.ClickException(f"cluster {cfg.cluster_name} is not up (run `rayr up` first)")
        ssh = SSH(cfg, state_dir(settings.temp_dir, cfg.cluster_name))
        remote = f"{node_temp_dir(cfg, 'head', record['head_ip'])}/{os.path.basename(script)}"
        done = ssh.copy(record["head_ip"], script, remote)
        if done.returncode:
            raise click.ClickException(f"copying {script} to the head failed: {done.stderr.strip()}")
        rayr = cfg.provider.rayr_command
        python = rayr[: -len("rayr")] + "python" if rayr.endswith("/rayr") else "python3"
        command = f"{python} {shlex.quote(remote)} {quoted}"
    sys.exit(_run_on_head(cfg, settings, command))


@click.command(name="get-head-ip")
@click.argument("config", type=click.Path(dir_okay=False))
def get_head_ip(config: str) -> None:
    """Print the address of the head of CONFIG's cluster."""
    cfg = _load(config)
    click.echo(cfg.provider.head_ip or "127.0.0.1")


COMMANDS = [up, down, exec_, submit, get_head_ip]
