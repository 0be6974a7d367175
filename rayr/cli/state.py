"""``rayr list / summary / get``: the state API (``rayr.util.state``) on the command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import redis
import yaml

from rayr.cli.common import address_option, gcs_for, password_option, stamp
from rayr.cli.common import table as common_table
from rayr.gcs import logs
from rayr.util.state import api
from rayr.util.state.common import RayStateApiException

FORMATS = ["default", "json", "yaml", "table", "text"]  # text: the old name of default

# the columns of each resource's table
COLUMNS: dict[str, list[str]] = {
    "tasks": ["task_id", "name", "state", "type", "node_id", "worker_pid", "error_type"],
    "actors": ["actor_id", "class_name", "state", "name", "node_id", "pid", "num_restarts"],
    "objects": ["object_id", "object_size", "storage", "reference_type", "node_id"],
    "nodes": ["node_id", "node_ip", "is_head_node", "state", "node_name"],
    "jobs": ["job_id", "submission_id", "status", "type", "start_time", "entrypoint"],
    "placement-groups": ["placement_group_id", "name", "creator_job_id", "state", "strategy"],
    "workers": ["worker_id", "worker_type", "is_alive", "node_id", "pid", "actor_id"],
}
GETTABLE = ["tasks", "actors", "nodes", "placement-groups"]


def parse_filters(texts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``key=value`` / ``key!=value`` as the API's filter triples."""
    out = []
    for text in texts:
        for predicate in ("!=", "="):
            key, found, value = text.partition(predicate)
            if found and key.strip():
                out.append((key.strip(), predicate, value.strip()))
                break
        else:
            raise click.BadParameter(f"{text!r}: a filter is KEY=VALUE or KEY!=VALUE, e.g. state=RUNNING",
                                     param_hint="--filter")
    return out


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, int) and value > 10**12:  # a time in ms
        return stamp(value / 1000)
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A state table: a column per field, headed by its name in capitals."""
    return common_table(rows, [(c, c.upper()) for c in columns], _cell)


def _render(rows: list[dict[str, Any]], columns: list[str], fmt: str, detail: bool) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    if fmt == "yaml" or (fmt == "default" and detail):
        return yaml.safe_dump(rows, sort_keys=False, default_flow_style=False)
    return table(rows, columns)


def _run(call: Callable[[], Any]) -> Any:
    """Run a state query; a clear message and exit 1 for what the user can fix."""
    try:
        return call()
    except (ValueError, RayStateApiException) as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    except redis.RedisError as err:
        click.echo(f"Cannot reach the cluster: {err}", err=True)
        sys.exit(1)


@click.command("list")
@click.argument("resource", type=click.Choice(list(COLUMNS)))
@address_option
@password_option
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep only rows where KEY equals (=) or differs from (!=) VALUE; repeatable.")
@click.option("--limit", type=int, default=api.DEFAULT_LIMIT, show_default=True, help="Most rows shown.")
@click.option("--detail", is_flag=True, help="Every field of each row (yaml by default).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="default", show_default=True)
def list_command(resource: str, address: str | None, redis_password: str | None, filters: tuple[str, ...],
                 limit: int, detail: bool, fmt: str) -> None:
    """List tasks, actors, objects, nodes, jobs, placement groups or workers."""
    parsed = parse_filters(filters)
    gcs = gcs_for(address, redis_password)
    rows = _run(lambda: api.query(gcs, resource, parsed, limit, detail, raise_on_missing_output=False))
    click.echo(_render([r.asdict() for r in rows], COLUMNS[resource], "default" if fmt == "text" else fmt,
                       detail))


@click.command("summary")
@click.argument("resource", type=click.Choice(list(api.SUMMARIES)))
@address_option
@password_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="default", show_default=True)
def summary_command(resource: str, address: str | None, redis_password: str | None, fmt: str) -> None:
    """Counts of tasks (by function), actors (by class) or objects (by job), per state."""
    gcs = gcs_for(address, redis_password)
    data = _run(lambda: api.summarize(gcs, resource, raise_on_missing_output=False))
    if fmt in ("json", "yaml"):
        click.echo(json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False))
        return
    entries = list(data["cluster"]["summary"].values())
    if resource == "objects":
        rows = [{"job_id": e["job_id"], "objects": e["total_objects"], "bytes": e["total_size_bytes"],
                 "storage": _counts(e["storage_counts"]), "references": _counts(e["ref_type_counts"])}
                for e in entries]
        click.echo(table(rows, ["job_id", "objects", "bytes", "storage", "references"]))
        return
    key = "func_or_class_name" if resource == "tasks" else "class_name"
    rows = [{key: e[key], "total": sum(e["state_counts"].values()), "states": _counts(e["state_counts"])}
            for e in entries]
    total = data["cluster"].get(f"total_{resource}", len(rows))
    click.echo(f"======== {resource} summary: {total} in all ========")
    click.echo(table(rows, [key, "total", "states"]))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


@click.command("get")
@click.argument("resource", type=click.Choice(GETTABLE))
@click.argument("id")
@address_option
@password_option
@click.option("--format", "fmt", type=click.Choice(["default", "json", "yaml"]), default="default",
              show_default=True)
def get_command(resource: str, id: str, address: str | None, redis_password: str | None, fmt: str) -> None:
    """Every field of one task, actor, node or placement group; exit 1 if there is none."""
    gcs = gcs_for(address, redis_password)
    found = _run(lambda: api.get_in(gcs, resource, id))
    if found is None:
        click.echo(f"Error: no {resource[:-1].replace('-', ' ')} with id {id!r}", err=True)
        sys.exit(1)
    row = found.asdict()
    click.echo(json.dumps(row, indent=2, default=str) if fmt == "json"
               else yaml.safe_dump(row, sort_keys=False))


COMMANDS = [list_command, summary_command, get_command]


# ---------------------------------------------------------------------- logs
def _node_of(gcs: Any, node_id: str | None) -> list[str]:
    """The alive nodes a log command looks at: ``node_id`` (a prefix will do) or all."""
    alive = [n.node_id for n in gcs.alive_nodes()]
    if node_id is None:
        return alive
    found = [n for n in alive if n.startswith(node_id)]
    if len(found) != 1:
        click.echo(f"Error: {len(found)} alive nodes match --node-id {node_id!r}; alive: {', '.join(alive)}",
                   err=True)
        sys.exit(1)
    return found


def _worker_log(gcs: Any, what: str, id: str | None, pid: int | None, node_id: str | None) -> tuple[str, str]:
    """(node, log file) of the worker that is actor ``id``, ran task ``id``, or has ``pid``."""
    if what == "actor":
        row = gcs.actor_info(id)
        if not row:
            raise logs.LogError(f"no actor with id {id!r}")
        if not row.get("worker") or not row.get("node"):
            state_now = row.get("state", "?")
            raise logs.LogError(f"actor {id} has not run yet (state {state_now}), so it has no log")
        return row["node"], f"worker-{row['worker']}.log"
    if what == "task":
        task = api.get_in(gcs, "tasks", id or "")
        if task is None:
            raise logs.LogError(f"no task with id {id!r} in the task events")
        if not task.worker_id or not task.node_id:
            raise logs.LogError(f"task {id} has not run yet (state {task.state}), so it has no log")
        return task.node_id, f"worker-{task.worker_id}.log"
    for node in _node_of(gcs, node_id):
        for entry in logs.list_logs(gcs, node):
            if entry.get("pid") == pid:
                return node, entry["name"]
    raise logs.LogError(f"no worker with pid {pid} on {'node ' + node_id if node_id else 'any alive node'}")


def _show(gcs: Any, node: str, name: str, tail: int, follow: bool) -> None:
    """Print log ``name`` of ``node``: its last ``tail`` lines (all if tail < 0), then, with
    ``follow``, what is appended until interrupted."""
    if tail < 0:
        offset = 0
        while True:
            data, offset = logs.read_log(gcs, node, name, offset)
            click.echo(data.decode(errors="replace"), nl=False)
            if len(data) < logs.MAX_READ:
                break
    else:
        data, offset = logs.read_log(gcs, node, name, -min(logs.MAX_READ, max(tail, 1) * 512))
        lines = data.decode(errors="replace").splitlines(keepends=True)
        click.echo("".join(lines[-tail:] if tail else []), nl=False)
    while follow:
        time.sleep(0.5)
        data, offset = logs.read_log(gcs, node, name, offset)
        click.echo(data.decode(errors="replace"), nl=False)


@click.command("logs")
@click.argument("what", required=False, type=click.Choice(["worker", "actor", "task", "file"]))
@click.argument("name", required=False)
@address_option
@password_option
@click.option("--node-id", help="The node to look at (a unique prefix will do); default: every alive node.")
@click.option("--pid", type=int, help="worker: the worker's process id.")
@click.option("--id", "id_", help="actor / task: its id.")
@click.option("--tail", type=int, default=1000, show_default=True, help="Last lines shown; -1 for all.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what is appended.")
def logs_command(what: str | None, name: str | None, address: str | None, redis_password: str | None,
                 node_id: str | None, pid: int | None, id_: str | None, tail: int, follow: bool) -> None:
    """Log files of the cluster's nodes, read through Redis (so from any machine).

    \b
    rayr logs                          list every alive node's log files
    rayr logs worker --pid 1234        the log of the worker with that pid
    rayr logs actor --id ACTOR_ID      the log of the worker an actor lives in
    rayr logs task --id TASK_ID        the log of the worker that ran a task
    rayr logs file NAME --node-id N    one file by name (e.g. raylet-<id>.log)
    """
    gcs = gcs_for(address, redis_password)
    try:
        if what is None:
            for node in _node_of(gcs, node_id):
                click.echo(f"======== node {node} ========")
                rows = [{"name": e["name"], "size": e["size"], "pid": e.get("pid")}
                        for e in logs.list_logs(gcs, node)]
                click.echo(table(rows, ["name", "size", "pid"]))
            return
        if what == "file":
            if not name or not node_id:
                raise click.UsageError("rayr logs file NAME --node-id NODE (see `rayr logs` for names)")
            (node,) = _node_of(gcs, node_id)
            _show(gcs, node, name, tail, follow)
            return
        if what == "worker" and pid is None:
            raise click.UsageError("rayr logs worker --pid PID")
        if what in ("actor", "task") and not id_:
            raise click.UsageError(f"rayr logs {what} --id ID")
        node, file_name = _worker_log(gcs, what, id_, pid, node_id)
        _show(gcs, node, file_name, tail, follow)
    except logs.LogError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # the end of --follow
        pass


COMMANDS.append(logs_command)
