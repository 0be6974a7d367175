"""What several ``rayr`` commands share: finding the cluster they act on."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import redis

from rayr.config import ConfigError, Settings, read_password_file
from rayr.gcs import address as address_mod
from rayr.gcs import preflight
from rayr.gcs.client import GcsClient, connect_as
from rayr.gcs.cluster import auth_error, cluster_client

address_option = click.option(
    "--address", help="The cluster's Redis: HOST:PORT, redis[s]://[user@]host:port[/db] or "
                      "redis+sentinel://h1:26379,h2:26379/master (default: RAYR_ADDRESS, then the "
                      "cluster `rayr start` recorded on this host).")

PASSWORD_VISIBLE = ("rayr: warning: --redis-password is visible to every user of this host (ps, "
                    "/proc); prefer RAYR_REDIS_PASSWORD or --redis-password-file")


def _remember_password_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta["rayr.redis_password_file"] = value


def _password(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The password given by flag (with a warning: command lines are public) or by file."""
    if value:
        click.echo(PASSWORD_VISIBLE, err=True)
        return value
    path = ctx.meta.get("rayr.redis_password_file")
    if not path:
        return None  # the settings then take RAYR_REDIS_PASSWORD(_FILE) or the session file's
    try:
        return read_password_file(path)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--redis-password-file") from None


def password_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis-password`` and ``--redis-password-file``, both arriving as ``redis_password``."""
    command = click.option(
        "--redis-password", callback=_password,
        help="Redis password (default: RAYR_REDIS_PASSWORD, RAYR_REDIS_PASSWORD_FILE, then this "
             "host's session file). Every user can read a command line: prefer those.")(command)
    return click.option(
        "--redis-password-file", is_eager=True, expose_value=False, callback=_remember_password_file,
        type=click.Path(dir_okay=False),
        help="A file (mode 0600) whose first line is the Redis password.")(command)


def stamp(seconds: float) -> str:
    """A time for a table cell."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], cell: Callable[[Any], str]) -> str:
    """``rows`` as aligned text: one (key, header) column each, values through ``cell``."""
    cells = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return "\n".join(lines)


def gcs_for(address: str | None, redis_password: str | None) -> GcsClient:
    """The cluster named by ``--address``, RAYR_ADDRESS or this host's session file (see
    ``cluster_client``); exits 1 if there is none."""
    try:
        return cluster_client(address, redis_password)
    except ConnectionError as err:
        click.echo(str(err).replace("pass an address", "pass --address"), err=True)
        sys.exit(1)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--address") from None


def refuse_unfit_redis(settings: Settings, url: str) -> None:
    """Refuse (one line per problem) a Redis a head must not run on; print the warnings."""
    client = connect_as(url, settings, socket_connect_timeout=3)
    try:
        findings = preflight.assess(preflight.gather(client, settings.cluster_name,
                                                     address_mod.parse(url).cluster))
    except redis.RedisError as err:
        refused = auth_error(url, settings.redis_password, err)
        raise click.ClickException(str(refused or f"cannot check the Redis at {url}: {err}")) from None
    finally:
        client.close()
    for warning in findings.warnings:
        click.echo(f"rayr: warning: the Redis at {url}: {warning}", err=True)
    if findings.errors:
        lines = "\n".join(f"  - {e}" for e in findings.errors)
        raise click.ClickException(f"will not start a head on the Redis at {url}:\n{lines}")
