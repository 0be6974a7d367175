"""Redis addresses: parsing, the password kept out of them, and the connection pools they name.

Accepted forms (everywhere an address is: ``--address``, ``--redis-address``, ``RAYR_ADDRESS``,
``init(address=)``)::

    host:port                                          plain TCP
    redis://[[user]:pass@]host:port[/db][?tls options]   plain TCP
    rediss://[[user]:pass@]host:port[/db][?tls options]  TLS
    unix:///path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:pass@]h1:26379,h2:26379/mymaster[/db]     the master Sentinel names
    rediss+sentinel://...                                             the same over TLS
    redis+cluster://[[user]:pass@]h1:7000,h2:7001,...                  a Redis Cluster (seed nodes)
    rediss+cluster://...                                              the same over TLS

On a Redis Cluster the tables of one rayr cluster carry the hash tag ``{<cluster name>}``
(``keys.py``), so they all live in one slot: each connection looks up which master serves
that slot when it connects (the process's last CLUSTER SLOTS reply, asked again once a
connection finds it wrong), and connects there; a MOVED or
CLUSTERDOWN reply (the slot moved, or a failover is under way) drops the connection, so the
command is sent again to wherever the slot is now. Spread keys (``{<cluster name>/<n>}``) get
a pool of their own per tag the same way (:func:`slot_pool`).

A password in the URL is taken out of it at once (:func:`split_password`): rayr passes
addresses on command lines, which every user can read, and prints them; the password travels
in ``RAYR_REDIS_PASSWORD`` instead. TLS options are query parameters, so the address alone says
how to reach Redis: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (paths),
``ssl_cert_reqs`` (``required``, ``optional``, ``none``) and ``ssl_check_hostname``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from rayr.keys import Keys

# the Sentinels' own password, where it is not the Redis password (their requirepass)
SENTINEL_PASSWORD_ENV = "RAYR_REDIS_SENTINEL_PASSWORD"
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
FORMS = ("'host:port', 'redis://[user:pass@]host:port[/db]', 'rediss://...' (TLS), 'unix:///path', "
         "'redis+sentinel://h1:26379,h2:26379/mymaster[/db]', or 'redis+cluster://h1:7000,h2:7001'")


@dataclass(frozen=True)
class RedisAddress:
    """A parsed address: where Redis is and how to talk to it (see the module docstring)."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    path: str = ""  # unix sockets
    db: int = 0
    username: str | None = None
    password: str | None = None
    service: str = ""  # the Sentinel master name
    options: tuple[tuple[str, str], ...] = ()  # TLS query options, in a stable order

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")

    @property
    def cluster(self) -> bool:
        """A Redis Cluster, named by some of its nodes."""
        return self.scheme.endswith("+cluster")

    def url(self) -> str:
        """The address as a URL with no password in it (safe to print and pass on)."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        query = f"?{urlencode(self.options, safe='/')}" if self.options else ""
        if self.scheme == "unix":
            db = {"db": str(self.db)} if self.db else {}
            query = f"?{urlencode(dict(self.options) | db, safe='/')}" if self.options or db else ""
            return f"unix://{user}{self.path}{query}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.service}" if self.sentinel else ""
        if self.db:
            path += f"/{self.db}"
        return f"{self.scheme}://{user}{hosts}{path}{query}"

    def with_options(self, **options: str | None) -> RedisAddress:
        """A copy with TLS options set (``None`` values are left as they were)."""
        merged = dict(self.options) | {k: v for k, v in options.items() if v is not None}
        return replace(self, options=_checked_options(merged, self.url(), self.tls))


def parse(address: str) -> RedisAddress:
    """Parse ``address`` (any accepted form).

    Raises:
        ValueError: the address is in none of the accepted forms; says which part is wrong.
    """
    text = address.strip()
    if "://" not in text:
        text = f"redis://{text}"
    scheme, rest = text.split("://", 1)
    if scheme not in SCHEMES:
        raise ValueError(f"Redis address {_redacted(address)!r} has scheme {scheme!r}; expected {FORMS}")
    rest, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    db_text = options.pop("db", None)
    if scheme == "unix":  # unix://[user:pass@]/path: the path starts at its first "/"
        netloc, at, path = rest.partition("@") if "@" in rest else ("", "", rest)
        netloc += at
    else:
        netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    checked = _checked_options(options, _redacted(address), scheme.startswith("rediss"))
    fields: dict[str, Any] = {"scheme": scheme, "username": username, "password": password,
                              "options": checked}
    if scheme == "unix":
        if not path.startswith("/"):
            raise ValueError(f"Redis address {_redacted(address)!r}: a unix socket needs an absolute "
                             "path, e.g. unix:///run/redis/redis.sock")
        fields["path"] = path
    else:
        fields["hosts"] = _hosts(hostlist, address, several=scheme.endswith(("+sentinel", "+cluster")))
        parts = [p for p in path.split("/") if p]
        if scheme.endswith("+sentinel"):
            if not parts:
                raise ValueError(f"Redis address {_redacted(address)!r} names no Sentinel master: "
                                 "expected redis+sentinel://h1:26379,h2:26379/mymaster")
            fields["service"] = parts.pop(0)
        if len(parts) > 1:
            raise ValueError(f"Redis address {_redacted(address)!r}: unexpected path {path!r}")
        if scheme.endswith("+cluster") and (parts or db_text not in (None, "0")):
            raise ValueError(f"Redis address {_redacted(address)!r}: a Redis Cluster has only database 0; "
                             "give its nodes alone, e.g. redis+cluster://h1:7000,h2:7001")
        db_text = parts[0] if parts else db_text
    if db_text is not None:
        if not db_text.isdigit():
            raise ValueError(f"Redis address {_redacted(address)!r}: the database must be a number "
                             f"like /0 or /3, got {db_text!r}")
        fields["db"] = int(db_text)
    return RedisAddress(**fields)


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon and password else None


def _hosts(text: str, address: str, *, several: bool) -> tuple[tuple[str, int], ...]:
    out = []
    for item in text.split(",") if several else [text]:
        host, port = _host_port(item)
        if not host or port is None:
            raise ValueError(f"Redis address {_redacted(address)!r} must name a host and a port, "
                             "e.g. 127.0.0.1:6379")
        out.append((host, port))
    return tuple(out)


def _host_port(item: str) -> tuple[str, int | None]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]:")
    else:
        host, _, port = item.rpartition(":")
    return host, int(port) if port.isdigit() else None


def _checked_options(options: dict[str, str], address: str, tls: bool) -> tuple[tuple[str, str], ...]:
    unknown = sorted(set(options) - set(TLS_OPTIONS))
    if unknown:
        raise ValueError(f"Redis address {address!r}: unknown option(s) {', '.join(unknown)}; "
                         f"the options are db and {', '.join(TLS_OPTIONS)}")
    if options and not tls:
        raise ValueError(f"Redis address {address!r}: TLS options ({', '.join(sorted(options))}) need a "
                         "TLS address: rediss://host:port (or rediss+sentinel://...)")
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in ("required", "optional", "none"):
        raise ValueError(f"Redis address {address!r}: ssl_cert_reqs must be required, optional or none, "
                         f"got {reqs!r}")
    return tuple(sorted(options.items()))


def _redacted(address: str) -> str:
    """``address`` with any password replaced, for error messages."""
    head, sep, rest = address.partition("://")
    if not sep:
        head, rest = "", address
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{head}{sep}{userinfo}{at}{hosts}{slash}{tail}"


def split_password(address: str) -> tuple[str, str | None]:
    """``(url without password, the password it held or None)``.

    Raises:
        ValueError: not an accepted address (see :func:`parse`).
    """
    parsed = parse(address)
    return parsed.url(), parsed.password


def redacted(address: str) -> str:
    """An address fit to print: a URL, password replaced; unparseable text redacted by shape."""
    try:
        parsed = parse(address)
    except ValueError:
        return _redacted(address)
    return parsed.url() if parsed.password is None else _redacted(address)


def connection_pool(address: str, password: str | None, cluster_name: str | None = None,
                    **kwargs: Any) -> redis.ConnectionPool:
    """A connection pool for ``address``: plain, TLS, unix, the master Sentinel names (whose
    connections ask the Sentinels for the master each time they connect, so a client follows a
    failover by reconnecting), or the Redis Cluster master serving the slot of rayr cluster
    ``cluster_name``'s keys (found the same way, by asking the cluster's nodes). ``password``
    (else the URL's) authenticates to Redis, with the URL's username for an ACL user;
    Sentinels are asked with ``RAYR_REDIS_SENTINEL_PASSWORD`` if set, else without credentials
    and, should they demand some, with the Redis password (see :class:`_Sentinels`)."""
    parsed = parse(address)
    conn: dict[str, Any] = {"db": parsed.db, "username": parsed.username,
                            "password": password if password is not None else parsed.password, **kwargs}
    tls = _tls_kwargs(parsed)
    if parsed.cluster:
        if cluster_name is None:
            raise ValueError(f"a Redis Cluster address ({parsed.url()}) needs the rayr cluster name, "
                             "whose keys' slot decides which node to talk to")
        slots = SlotMaster(parsed.hosts, slot_of(cluster_name), conn | tls, tls=parsed.tls)
        slot_cls: type[_SlotConnection] = _SlotSSLConnection if parsed.tls else _SlotConnection
        return redis.ConnectionPool(connection_class=slot_cls, slot_master=slots, **conn, **tls)
    if parsed.scheme == "unix":
        unix = redis.UnixDomainSocketConnection
        return redis.ConnectionPool(connection_class=unix, path=parsed.path, **conn)
    if parsed.sentinel:
        sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")} | tls
        sentinel_kwargs.setdefault("socket_connect_timeout", 2.0)  # a dead Sentinel must not stall us
        # nor retries of one: redis-py 8 retries each Sentinel with backoff (~4 s for a refusal)
        # before asking the next, and our own retries wrap the whole lookup
        sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
        own = os.environ.get(SENTINEL_PASSWORD_ENV) or None
        if own is not None:
            sentinel_kwargs["password"] = own
        manager = _Sentinels(list(parsed.hosts), sentinel_kwargs, None if own else conn["password"])
        managed = _FollowingSSLConnection if parsed.tls else _FollowingConnection
        return SentinelConnectionPool(parsed.service, manager, connection_class=managed, **conn, **tls)
    host, port = parsed.hosts[0]
    cls = redis.SSLConnection if parsed.tls else redis.Connection
    return redis.ConnectionPool(connection_class=cls, host=host, port=port, **conn, **tls)


class _Sentinels(Sentinel):
    """Sentinels asked without credentials until they demand some, then with the Redis
    password (one password for both is the usual setup; ``RAYR_REDIS_SENTINEL_PASSWORD`` names
    a different one)."""

    def __init__(self, hosts: list[tuple[str, int]], sentinel_kwargs: dict[str, Any],
                 fallback_password: str | None) -> None:
        super().__init__(hosts, sentinel_kwargs=sentinel_kwargs)
        self._hosts = hosts
        self._fallback = fallback_password

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as err:
            fallback, self._fallback = self._fallback, None  # tried once
            if fallback is None or "AuthenticationError" not in str(err):  # how redis-py 8 says NOAUTH
                raise
            self.sentinel_kwargs = {**self.sentinel_kwargs, "password": fallback}
            self.sentinels = [redis.Redis(host, port, **self.sentinel_kwargs) for host, port in self._hosts]
            return super().discover_master(service_name)


class _FollowingConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names, looked up each time it connects.

    redis-py's own (8.1) looks the master up only in ``connect()``, but ``send_packed_command``
    reconnects through ``connect_check_health``, which reuses the last address: after a
    failover such a connection kept dialling the dead master for good.
    """

    def _connect_retry(self) -> None:
        if self._sock:
            return
        self.connect_check_health(self.connection_pool.check_connection, retry_socket_connect=False)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _FollowingSSLConnection(_FollowingConnection, SentinelManagedSSLConnection):
    """:class:`_FollowingConnection` over TLS."""


def slot_of(cluster_name: str) -> int:
    """The Redis Cluster hash slot of every key of rayr cluster ``cluster_name``."""
    return key_slot(Keys(cluster_name).prefix.encode())


def spread_slot(keys: Keys, tag: int) -> int:
    """The Redis Cluster hash slot of the keys under spread tag ``tag`` (``Keys.spread_prefix``)."""
    return key_slot(keys.spread_prefix(tag).encode())


def on_cluster(pool: redis.ConnectionPool) -> bool:
    """Whether ``pool`` (made by ``connection_pool``) reaches a Redis Cluster."""
    return isinstance(pool.connection_kwargs.get("slot_master"), SlotMaster)


def slot_pool(pool: redis.ConnectionPool, slot: int) -> redis.ConnectionPool | None:
    """A pool like ``pool`` (a Redis Cluster one, made by ``connection_pool``) whose
    connections go to the master serving ``slot``; None for any other kind of Redis, where
    every key lives on the one server ``pool`` reaches."""
    if not on_cluster(pool):
        return None
    master = pool.connection_kwargs["slot_master"]
    kwargs = {**pool.connection_kwargs, "slot_master": master.for_slot(slot)}
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


class _SlotRanges:
    """Which master serves each slot, from the last CLUSTER SLOTS reply: shared by a process's
    lookups on one Redis Cluster (each new connection would otherwise ask again), and
    forgotten when a reply says a slot moved or a master could not be reached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranges: list[tuple[int, int, tuple[str, int]]] | None = None

    def lookup(self, slot: int) -> tuple[str, int] | None:
        with self._lock:
            ranges = self._ranges
        return next((master for start, end, master in ranges or () if start <= slot <= end), None)

    def store(self, ranges: list[tuple[int, int, tuple[str, int]]]) -> None:
        with self._lock:
            self._ranges = ranges

    def forget(self) -> None:
        with self._lock:
            self._ranges = None


_SLOT_RANGES: dict[tuple[tuple[str, int], ...], _SlotRanges] = {}
_SLOT_RANGES_LOCK = threading.Lock()


def _forget_slot_ranges_in_child() -> None:  # a forked worker asks afresh (and no lock is held)
    global _SLOT_RANGES_LOCK
    _SLOT_RANGES.clear()
    _SLOT_RANGES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_slot_ranges_in_child)


def _slot_ranges(seeds: tuple[tuple[str, int], ...]) -> _SlotRanges:
    with _SLOT_RANGES_LOCK:
        return _SLOT_RANGES.setdefault(tuple(sorted(seeds)), _SlotRanges())


class SlotMaster:
    """Which master of a Redis Cluster serves one slot, asked of its nodes (CLUSTER SLOTS) and
    remembered for the process (``_SlotRanges``) until a connection finds it wrong."""

    def __init__(self, seeds: tuple[tuple[str, int], ...], slot: int, conn: dict[str, Any], *,
                 tls: bool) -> None:
        self.slot = slot
        self._known = list(seeds)  # the seeds, then every node a reply named
        self._probe = {k: v for k, v in conn.items() if k in ("username", "password") or k.startswith("ssl_")}
        self._probe.update(ssl=tls, socket_connect_timeout=2.0, socket_timeout=2.0)
        self._lock = threading.Lock()
        self._ranges = _slot_ranges(seeds)

    def for_slot(self, slot: int) -> SlotMaster:
        """The same lookup for another slot, starting from every node known here."""
        other = SlotMaster((), slot, {}, tls=False)
        with self._lock:
            other._known = list(self._known)
        other._probe = dict(self._probe)
        other._ranges = self._ranges
        return other

    def forget(self) -> None:
        """A connection found the slot elsewhere, or its master away: ask the nodes again."""
        self._ranges.forget()

    def find(self) -> tuple[str, int]:
        """The (host, port) of the master serving the slot now.

        Raises:
            redis.ConnectionError: no node answered, or none serves the slot (the cluster is
                down or still failing over); the caller retries as for any unreachable Redis.
        """
        remembered = self._ranges.lookup(self.slot)
        if remembered is not None:
            return remembered
        with self._lock:
            known = list(self._known)
        errors = []
        for host, port in known:
            client = redis.Redis(host=host, port=port, **self._probe)
            try:
                reply = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError as err:
                errors.append(f"{host}:{port}: {err}")
                continue
            finally:
                client.close()
            found = None
            ranges = []
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                nodes = [(_text(n[0]) or host, int(n[1])) for n in entry[2:]]
                with self._lock:
                    self._known.extend(n for n in nodes if n not in self._known)
                ranges.append((start, end, (_text(master[0]) or host, int(master[1]))))
                if start <= self.slot <= end:
                    found = ranges[-1][2]
            if found is not None:
                self._ranges.store(ranges)
                return found
            errors.append(f"{host}:{port}: no master serves slot {self.slot}")
        raise redis.ConnectionError(f"no node of the Redis Cluster answered with the master of slot "
                                    f"{self.slot}: {'; '.join(errors)}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# replies that mean the slot is served elsewhere now, or not at the moment: the command did not run
_ELSEWHERE = (MovedError, AskError, ClusterDownError, TryAgainError)


class _SlotConnection(redis.Connection):
    """A connection to the Redis Cluster master serving one slot, looked up each time it
    connects. A reply saying the slot is elsewhere drops it and raises ConnectionError, so the
    command goes again (retry, or a command stream's resend) to where the slot is now."""

    def __init__(self, slot_master: SlotMaster, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot_master = slot_master

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.host, self.port = self.slot_master.find()
        try:
            super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (redis.ConnectionError, OSError):  # that master is away: the slot may be elsewhere
            self.slot_master.forget()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)
        except _ELSEWHERE as err:
            self.disconnect()
            self.slot_master.forget()
            raise redis.ConnectionError(f"the slot moved ({type(err).__name__}: {err}); "
                                        "connecting again") from err
        except redis.ConnectionError:  # the master went away: it may have failed over
            self.slot_master.forget()
            raise
        if isinstance(response, _ELSEWHERE):
            self.disconnect()  # an error inside a pipeline's replies
            self.slot_master.forget()
            raise redis.ConnectionError(f"the slot moved ({response}); connecting again")
        return response


class _SlotSSLConnection(_SlotConnection, redis.SSLConnection):
    """:class:`_SlotConnection` over TLS."""


def _tls_kwargs(parsed: RedisAddress) -> dict[str, Any]:
    if not parsed.tls:
        return {}
    out: dict[str, Any] = {}
    for name, value in parsed.options:
        if name == "ssl_check_hostname":
            out[name] = value.lower() in ("1", "true", "yes")
        else:
            out[name] = value
    return out
