"""Finding the cluster a tool acts on (an address, ``RAYR_ADDRESS``, or this host's session)
and the password for it, with one set of errors for ``init()``, the CLI and the job client.

The password, first found wins: one in the address itself (taken out of it at once), the
``redis_password`` setting (``--redis-password``, ``RAYR_REDIS_PASSWORD``, or the 0600 file
``RAYR_REDIS_PASSWORD_FILE`` names), then the session file, for the cluster it records only.
"""

from __future__ import annotations

import redis
from redis.sentinel import MasterNotFoundError

from rayr.config import Settings, env_address, load_settings
from rayr.gcs.address import SENTINEL_PASSWORD_ENV, split_password
from rayr.gcs.client import GcsClient, connect
from rayr.keys import Keys
from rayr.session import adopt_recorded_name, read_session_file, recorded_for

# what a user who lacks the password should set; every message names it the same way
PASSWORD_HOW = ("set RAYR_REDIS_PASSWORD (or RAYR_REDIS_PASSWORD_FILE, a file only you can read; "
                "the CLI's --redis-password-file)")


class RedisAuthError(ConnectionError):
    """Redis refused us: no password, a wrong one, or an ACL user without a permission. The
    message is one line that says which variable or flag to set."""


def resolve(address: str, settings: Settings) -> tuple[str, str | None]:
    """``(url without password, password)`` for an explicit ``address`` (see the module
    docstring for where the password comes from).

    Raises:
        ValueError: the address is malformed.
    """
    url, in_url = split_password(address)
    recorded = recorded_for(settings, url)
    if recorded is not None:
        adopt_recorded_name(settings, recorded)
    return url, in_url or settings.redis_password or (recorded or {}).get("password")


def resolve_default(settings: Settings, address: str | None = None) -> tuple[str, str | None]:
    """``address``, else ``RAYR_ADDRESS``, else the cluster ``rayr start`` recorded on this
    host, with its password (see ``resolve``).

    Raises:
        ConnectionError: no address given and no cluster recorded here.
        ValueError: the address is malformed.
    """
    address = address or env_address()
    if address is None or address == "auto":
        recorded = read_session_file(settings)
        if recorded is None:
            raise ConnectionError(
                "No cluster found: pass an address, set RAYR_ADDRESS or run `rayr start --head`."
            )
        adopt_recorded_name(settings, recorded)
        return recorded["address"], settings.redis_password or recorded.get("password")
    return resolve(address, settings)


def auth_error(url: str, password: str | None, err: Exception) -> RedisAuthError | None:
    """The one-line error for a refusal of our credentials (or permissions), else None."""
    text = str(err)
    if isinstance(err, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError) or (
            isinstance(err, redis.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "invalid"))):
        if "without any password configured" in text or "no password is set" in text:
            return RedisAuthError(f"The Redis at {url} has no password, but one was given: unset "
                                  "RAYR_REDIS_PASSWORD / RAYR_REDIS_PASSWORD_FILE, or drop --redis-password.")
        if password:
            return RedisAuthError(f"The Redis at {url} refused the Redis password given (or the user "
                                  f"named in the address): {PASSWORD_HOW} to the cluster's password.")
        return RedisAuthError(f"The Redis at {url} requires a Redis password: {PASSWORD_HOW}.")
    if isinstance(err, MasterNotFoundError) and "AuthenticationError" in text:
        return RedisAuthError(f"The Sentinels of {url} refused to answer: they need a password, or not "
                              "the one given (rayr tries the Redis password): set "
                              f"{SENTINEL_PASSWORD_ENV} to theirs.")
    if isinstance(err, redis.exceptions.NoPermissionError) or (  # redis-py strips the NOPERM
            isinstance(err, redis.ResponseError) and text.startswith("NOPERM")):
        return RedisAuthError(f"The Redis at {url} denied the user named in the address a command rayr "
                              f"needs ({text}): grant the rules in docs/clusters/existing-redis.md.")
    return None


def check(client: redis.Redis, url: str, password: str | None) -> None:
    """PING through ``client``.

    Raises:
        RedisAuthError: credentials refused (see ``auth_error``).
        ConnectionError: Redis cannot be reached; names the address.
    """
    try:
        client.ping()
    except redis.RedisError as err:
        refused = auth_error(url, password, err)
        if refused is not None:
            raise refused from None
        raise ConnectionError(f"Cannot reach the Redis at {url}: {err}") from None


def reachable(url: str, password: str | None) -> bool:
    """Whether the Redis at ``url`` answers.

    Raises:
        RedisAuthError: it answers but refuses our credentials.
    """
    client = connect(url, password, cluster_name="", socket_connect_timeout=2)  # any node answers a PING
    try:
        check(client, url, password)
        return True
    except RedisAuthError:
        raise
    except ConnectionError:
        return False
    finally:
        client.close()


def cluster_client(address: str | None = None, redis_password: str | None = None) -> GcsClient:
    """A client of the cluster at ``address``, else ``RAYR_ADDRESS``, else the one ``rayr
    start`` recorded on this host, that Redis has accepted (PING).

    Raises:
        RedisAuthError: the credentials were refused; the message says what to set.
        ConnectionError: no address given and no cluster recorded here, or Redis is unreachable.
        ValueError: the address is malformed.
    """
    settings = load_settings({"redis_password": redis_password})
    url, password = resolve_default(settings, address)  # may adopt the session's cluster name
    client = connect(url, password, cluster_name=settings.cluster_name, socket_connect_timeout=3)
    try:
        check(client, url, password)
    except ConnectionError:
        client.close()
        raise
    return GcsClient(client, Keys(settings.cluster_name))
