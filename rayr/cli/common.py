"""What several ``rayr`` commands share: finding the cluster they act on."""

from __future__ import annotations

import sys

import click

from rayr.config import env_address, load_settings
from rayr.gcs.client import GcsClient, connect, normalize_address
from rayr.keys import Keys
from rayr.session import read_session_file, recorded_password


def gcs_for(address: str | None, redis_password: str | None) -> GcsClient:
    """The cluster named by ``--address``, RAYR_ADDRESS or this host's session file; exits 1 if none.

    The password: ``--redis-password``, else RAYR_REDIS_PASSWORD, else the session file's when
    it records that cluster."""
    settings = load_settings({"redis_password": redis_password})
    address = address or env_address()
    if address is None:
        recorded = read_session_file(settings)
        if recorded is None:
            click.echo("No cluster found: pass --address, set RAYR_ADDRESS or run `rayr start --head`.",
                       err=True)
            sys.exit(1)
        address = recorded["address"]
    try:
        url = normalize_address(address)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--address") from None
    password = settings.redis_password or recorded_password(settings, url)
    return GcsClient(connect(url, password, socket_connect_timeout=3), Keys(settings.cluster_name))
