"""The session file: how clients of this user on this host find the cluster that ``rayr
start`` (or ``rayr up``) started here, password included, so they need not be told.

One JSON file, ``<temp_dir>/rayr_current_cluster`` (0600): ``address``, ``password``,
``session_dir``, ``cluster_name``. Read by ``init()``, the CLI and the job client; written and removed by the
commands that start and stop clusters.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from rayr.config import Settings
from rayr.private_files import write_private

SESSION_FILE = "rayr_current_cluster"


def session_file_path(settings: Settings) -> str:
    return os.path.join(settings.temp_dir, SESSION_FILE)


def read_session_file(settings: Settings) -> dict[str, Any] | None:
    """The cluster that ``rayr start`` recorded on this host, if any."""
    try:
        with open(session_file_path(settings)) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None


def write_session_file(settings: Settings, address: str, password: str | None, session_dir: str) -> None:
    """Record the cluster at ``address`` as this host's (0600: it holds the password)."""
    write_private(session_file_path(settings),
                  json.dumps({"address": address, "password": password, "session_dir": session_dir,
                              "cluster_name": settings.cluster_name}))


def adopt_recorded_name(settings: Settings, recorded: dict[str, Any]) -> None:
    """Use the cluster name the session file records, unless one was set (``RAYR_CLUSTER_NAME``,
    an argument): a head started with ``--cluster-name`` is found under its own keys."""
    name = recorded.get("cluster_name")
    if name and "cluster_name" not in settings.model_fields_set:
        settings.cluster_name = name


def remove_session_file(settings: Settings, address: str | None = None) -> None:
    """Forget this host's cluster (only if it is the one at ``address``, when given)."""
    if address is not None:
        current = read_session_file(settings)
        if not current or current.get("address") != address:
            return
    try:
        os.unlink(session_file_path(settings))
    except FileNotFoundError:
        pass


def recorded_for(settings: Settings, url: str) -> dict[str, Any] | None:
    """The session file's record if the cluster at ``url`` is the one it records (the same
    address, or the same port on this host), else None."""
    recorded = read_session_file(settings)
    if not recorded:
        return None
    if recorded.get("address") == url:
        return recorded
    mine, theirs = urlsplit(recorded.get("address", "")), urlsplit(url)
    try:
        same_port = mine.port == theirs.port and mine.scheme == theirs.scheme
    except ValueError:  # several hosts (Sentinel): only the exact address matches
        return None
    if not same_port or not (mine.hostname == theirs.hostname or
                             _is_this_host(mine.hostname) and _is_this_host(theirs.hostname)):
        return None
    return recorded


def recorded_password(settings: Settings, url: str) -> str | None:
    """The Redis password the session file records, if the cluster at ``url`` is the one it
    records (see recorded_for): so clients of the user who started it need not be told.
    Never sent to another server: AUTH would hand it over."""
    recorded = recorded_for(settings, url)
    return str(recorded["password"]) if recorded and recorded.get("password") else None


def _is_this_host(host: str | None) -> bool:
    import psutil

    if host in ("localhost", "0.0.0.0", "::", socket.gethostname()) or (host or "").startswith("127."):
        return True
    return any(addr.address.split("%")[0] == host
               for addrs in psutil.net_if_addrs().values() for addr in addrs)
