"""What several ``rayr`` commands share: finding the cluster they act on."""

from __future__ import annotations

import sys

import click

from rayr.gcs.client import GcsClient
from rayr.gcs.cluster import cluster_client


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
