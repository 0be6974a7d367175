"""Finding the cluster a tool acts on: an address, ``RAYR_ADDRESS``, or this host's session."""

from __future__ import annotations

from rayr.config import env_address, load_settings
from rayr.gcs.client import GcsClient, connect, normalize_address
from rayr.keys import Keys
from rayr.session import read_session_file, recorded_password


def cluster_client(address: str | None = None, redis_password: str | None = None) -> GcsClient:
    """A client of the cluster at ``address``, else ``RAYR_ADDRESS``, else the one ``rayr
    start`` recorded on this host. The password: ``redis_password``, else
    ``RAYR_REDIS_PASSWORD``, else the session file's when it records that cluster.

    Raises:
        ConnectionError: no address given and no cluster recorded here.
        ValueError: the address is malformed.
    """
    settings = load_settings({"redis_password": redis_password})
    address = address or env_address()
    if address is None:
        recorded = read_session_file(settings)
        if recorded is None:
            raise ConnectionError(
                "No cluster found: pass an address, set RAYR_ADDRESS or run `rayr start --head`."
            )
        address = recorded["address"]
    url = normalize_address(address)
    password = settings.redis_password or recorded_password(settings, url)
    return GcsClient(connect(url, password, socket_connect_timeout=3), Keys(settings.cluster_name))
