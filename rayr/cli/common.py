"""What several ``rayr`` commands share: finding the cluster they act on."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from rayr.gcs.client import GcsClient
from rayr.gcs.cluster import cluster_client

address_option = click.option("--address", help="The cluster's Redis, HOST:PORT (default: RAYR_ADDRESS, "
                                                 "then the cluster `rayr start` recorded on this host).")
password_option = click.option("--redis-password", help="Redis password (default: RAYR_REDIS_PASSWORD, "
                                                         "then this host's session file).")


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
