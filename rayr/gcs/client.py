"""Typed access to the GCS tables in Redis. Control-plane calls only; hot paths pipeline."""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from rayr import serialization
from rayr.config import Settings
from rayr.exceptions import WorkerCrashedError
from rayr.gcs import address as address_mod
from rayr.gcs import control, records, scripts
from rayr.gcs.rows import ActorInfo, NodeInfo, NodeState
from rayr.ids import JobID
from rayr.keys import (
    ACTOR_GROUP,
    FAMILIES,
    SPREAD_TAGS,
    TASK_GROUP,
    Keys,
    consumer_node,
    object_tag,
    spread_tag,
)
from rayr.task_spec import ACTOR_CREATION, SPEC_FIELD, TaskSpec, entry_fields

log = logging.getLogger("rayr.gcs")
T = TypeVar("T")
Command = tuple[Any, ...]
Tagged = tuple[int | None, Command]  # a command and the spread tag of its keys (None: the tables')

NODE_ALIVE = NodeState.ALIVE
NODE_DEAD = NodeState.DEAD


def normalize_address(address: str) -> str:
    """``address`` in any accepted form (``host:port``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://``; see ``rayr.gcs.address``) as a URL, without any password it held.

    Raises:
        ValueError: the address is in none of those forms; says what is wrong.
    """
    return address_mod.parse(address).url()


def redis_retry() -> Retry:
    """Retries for one command: enough for a blip, short enough that a process whose Redis is
    gone (the cluster is shutting down) stops in about a second, not redis-py's ~5 s."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)


def no_retry() -> Retry:
    """For reads that take stream entries (``XREADGROUP >``): redis-py must not send one again
    after a lost reply, or the entries the first one took would sit in the consumer's pending
    list with nobody to run them; the caller recovers them instead."""
    return Retry(NoBackoff(), 0)


REDIS_DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError)
INBOX_KEYS_KEPT = 4096  # inbox keys remembered by GcsClient.inbox_key
RECONNECT_S = 60.0  # how long work that must not be dropped waits for Redis to come back
RECONNECT_BACKOFF_MAX_S = 1.0  # the longest pause between two tries while Redis is away
WAIT_TIMEOUT_MS = 500  # how long a registration waits for the replicas to hold it (durable)
DEGRADED_S = 5.0  # after they did not, registrations go unconfirmed this long
DEGRADED_MAX_S = 60.0  # ... twice as long after each miss in a row, up to this


def until_reachable(fn: Callable[[], T], what: str, timeout: float = RECONNECT_S) -> T:
    """``fn()``, retried with backoff while Redis is unreachable (e.g. restarting), for up to
    ``timeout`` seconds; for steps whose loss would lose work (recovering a dead worker's tasks)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn()
        except REDIS_DOWN_ERRORS:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable while %s; retrying", what)
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_BACKOFF_MAX_S)


# For every client rayr makes. No socket timeout: blocking reads (BLPOP, XREADGROUP BLOCK)
# wait longer than redis-py 8.1's default of 5 s. No CLIENT SETINFO (two round trips per new
# connection) and no lookup of redis-py's version in the package metadata (~2.5 ms per
# client): rayr opens many short-lived clients.
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": None} | (
    {"driver_info": None} if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}  # redis-py before 7.1
)


# how long a job's task-events end marker lives (at least): ends the tables of views that
# arrive after the job's retention (a tiny key per ended job, for a week)
ENDED_MARKER_MS = 7 * 86_400_000


def connect(url: str, password: str | None = None, **kwargs: Any) -> redis.Redis:
    """A Redis client for ``url`` (bytes replies): any address form ``rayr.gcs.address``
    accepts, Sentinel, TLS and Redis Cluster included (a cluster address needs
    ``cluster_name=``, the rayr cluster whose keys' slot picks the node)."""
    client_only = {k: kwargs.pop(k) for k in ("single_connection_client",) if k in kwargs}
    kwargs = {"retry": redis_retry(), **CLIENT_OPTIONS, **kwargs}
    return redis.Redis(connection_pool=connection_pool(url, password, **kwargs), **client_only)


def connect_as(url: str, settings: Settings, **kwargs: Any) -> redis.Redis:
    """``connect`` with the password and rayr cluster name of ``settings``."""
    return connect(url, settings.redis_password, cluster_name=settings.cluster_name, **kwargs)


def connection_pool(url: str, password: str | None = None, **kwargs: Any) -> redis.ConnectionPool:
    """A connection pool for ``url`` with rayr's client options (see ``connect``)."""
    return address_mod.connection_pool(url, password, **{"retry": redis_retry(), **CLIENT_OPTIONS, **kwargs})


def on_tag(client: redis.Redis, keys: Keys, tag: int, single_connection: bool = False) -> redis.Redis:
    """``client``, or on a Redis Cluster a client like it whose connections go to the master
    serving spread tag ``tag`` (for a connection of one's own there, e.g. a blocking read;
    ``single_connection``: one connection, as ``single_connection_client``)."""
    pool = address_mod.slot_pool(client.connection_pool, address_mod.spread_slot(keys, tag))
    if pool is None:
        return client
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)


def _scan_batches(client: Any, match: str, count: int) -> Iterator[list[bytes]]:
    """The keys ``client``'s server holds that match ``match``, ``count`` at a time."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=match, count=count):
        batch.append(key)
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch


class GcsClient:
    """The node, job, function and object tables of one cluster."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        # Any: redis-py's stubs type replies as bytes | str, but we never decode responses
        self.r: Any = client
        self.keys = keys
        # a Sentinel-managed master has a replica a failover promotes: registrations nobody
        # would make again wait until it holds them (see durable)
        self.wait_replicas = 1 if isinstance(client.connection_pool, SentinelConnectionPool) else 0
        self._degraded_until = 0.0
        self._degraded_for = DEGRADED_S  # doubled after each WAIT in a row the replicas missed
        self._store = client.register_script(scripts.STORE_OBJECTS)
        self._fetch = client.register_script(scripts.FETCH_OR_WAIT)
        self._register_actor = client.register_script(scripts.REGISTER_ACTOR)
        self._mark_actor_dead = client.register_script(scripts.MARK_ACTOR_DEAD)
        self._close_mailbox = client.register_script(scripts.CLOSE_MAILBOX)
        self._update_live_actor = client.register_script(scripts.UPDATE_LIVE_ACTOR)
        self._cancel_task = client.register_script(scripts.CANCEL_TASK)
        self._give_back_tasks = client.register_script(scripts.GIVE_BACK_TASKS)
        self._cancel_actor_call = client.register_script(scripts.CANCEL_ACTOR_CALL)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._shards: dict[int, Any] = {}
        # on a Redis Cluster a script touches one slot: objects go by spread tag, and what a
        # script leaves to other slots follows in commands of their own (scripts.SPREAD)
        self.spread_only = address_mod.on_cluster(client.connection_pool)
        self._spread_args = [keys.spread_base, "1" if self.spread_only else "0"]
        self._inbox_keys: dict[str, str] = {}  # worker hex -> its inbox key (inbox_key)

    def shard(self, tag: int | None) -> Any:
        """The client for keys under spread tag ``tag`` (``Keys.spread_prefix``; None: the
        tables'): on a Redis Cluster one whose connections go to the master serving that tag's
        slot, made on first use; on any other Redis the tables' own client."""
        if tag is None:
            return self.r
        client = self._shards.get(tag)
        if client is None:  # another thread's, if it was first
            client = self._shards.setdefault(tag, on_tag(self.r, self.keys, tag))
        return client

    def by_server(self, items: Iterable[T], client_of: Callable[[T], Any]) -> list[tuple[Any, list[T]]]:
        """``items`` grouped by the Redis server their client (``client_of(item)``) reaches,
        each group with one of those clients: on a Redis Cluster a group per master (its
        tags' clients differ, their master is the same), elsewhere one group."""
        groups: dict[Any, tuple[Any, list[T]]] = {}
        for item in items:
            client = client_of(item)
            server = client.connection_pool.connection_kwargs["slot_master"].find() if self.spread_only else 0
            groups.setdefault(server, (client, []))[1].append(item)
        return list(groups.values())

    def shard_clients(self) -> list[Any]:
        """One client per Redis server holding spread keys: on a Redis Cluster one per master
        serving some tag (for SCANs), elsewhere just the tables' client."""
        if not self.spread_only:
            return [self.r]
        return [client for client, _ in self.by_server(range(SPREAD_TAGS), self.shard)]

    def scan_spread(self, suffix: str, count: int = 1000) -> Iterator[tuple[Any, list[bytes]]]:
        """(client, a batch of keys) for every spread key whose name after its prefix matches
        the glob ``suffix``, server by server."""
        for client in self.shard_clients():
            for batch in _scan_batches(client, self.keys.spread_glob(suffix), count):
                yield client, batch

    def close(self) -> None:
        """Close the tables' connections and every spread tag's."""
        for client in self._shards.values():
            if client is not self.r:
                client.connection_pool.disconnect()
        self.r.close()

    def durable(self) -> None:
        """Wait (WAIT, up to WAIT_TIMEOUT_MS) until the replicas hold this connection's writes.

        For the writes their writer would never make again if a failover lost them (a node's,
        a job's, an actor's or a placement group's registration, an exported function, an
        announced stream); a no-op without replicas to wait for, and for DEGRADED_S after a
        WAIT they did not answer in time (none attached, e.g. just after a failover)."""
        if not self.wait_replicas or time.monotonic() < self._degraded_until:
            return
        # WAIT covers the writes of the connection it runs on, and the pool may hand it one
        # that wrote nothing (another thread held the registration's): a write of its own on
        # the same connection first puts everything the master took before it under the WAIT
        with self.r.pipeline(transaction=False) as p:
            p.incr(self.keys.durable_mark)
            p.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
            acked = p.execute()[-1]
        if int(acked) < self.wait_replicas:
            self._degraded_until = time.monotonic() + self._degraded_for
            self._degraded_for = min(self._degraded_for * 2, DEGRADED_MAX_S)  # none may ever come
            log.warning("Redis replicas did not acknowledge a registration within %d ms; a failover "
                        "now could lose it", WAIT_TIMEOUT_MS)
        else:
            self._degraded_for = DEGRADED_S

    # ---------------------------------------------------------------- nodes
    def register_node(self, node: NodeInfo, ttl_s: float) -> None:
        node_hex = node.node_id
        with self.r.pipeline() as p:
            p.hset(self.keys.node(node_hex), mapping=node.to_hash())
            p.sadd(self.keys.nodes, node_hex)
            p.set(self.keys.node_alive(node_hex), b"1", px=int(ttl_s * 1000))
            p.publish(self.keys.node_channel, f"{node_hex}:{NODE_ALIVE}")
            p.execute()
        self.durable()

    def heartbeat(
        self,
        node_hex: str,
        ttl_s: float,
        available: dict[str, float],
        load: int,
        store: dict[str, Any] | None = None,
        host: dict[str, Any] | None = None,
    ) -> bool:
        """Refresh the node's liveness and load (and its store's and host's use, when given);
        False (and nothing refreshed) if the cluster has declared the node dead meanwhile: it
        must not resume, only rejoin as a new node."""
        fields = {"resources_available": json.dumps(available)}
        if store is not None:
            fields["store_usage"] = json.dumps(store)
        if host is not None:
            fields["host_usage"] = json.dumps(host)
        reply = self._heartbeat(
            keys=[self.keys.node(node_hex), self.keys.node_alive(node_hex), self.keys.heartbeat_channel],
            args=[int(ttl_s * 1000), f"{node_hex}:{load}", *[x for kv in fields.items() for x in kv]],
        )
        return bool(reply)

    def set_node_state(self, node_hex: str, state: str, reason: str = "") -> None:
        now = time.time()
        with self.r.pipeline() as p:
            p.hset(self.keys.node(node_hex), mapping={"state": state, "death_reason": reason,
                                                    "end_time": str(now)})
            p.delete(self.keys.node_alive(node_hex))
            if state != NODE_ALIVE:
                p.zadd(self.keys.dead_nodes, {node_hex: now})
            p.publish(self.keys.node_channel, f"{node_hex}:{state}")
            p.execute()

    def list_nodes(self) -> list[NodeInfo]:
        """Every node registered (and not yet trimmed from history), by id."""
        ids = sorted(self.r.smembers(self.keys.nodes))
        if not ids:
            return []
        with self.r.pipeline(transaction=False) as p:
            for node_id in ids:
                p.hgetall(self.keys.node(node_id.decode()))
            rows = p.execute()
        return [NodeInfo.from_hash(raw) for raw in rows if raw]

    def alive_nodes(self) -> list[NodeInfo]:
        return [n for n in self.list_nodes() if n.alive]

    def node_alive(self, node_hex: str) -> bool:
        return self.r.hget(self.keys.node(node_hex), "state") == NODE_ALIVE.encode()

    # ----------------------------------------------------------------- jobs
    def new_job(self, info: dict[str, Any]) -> JobID:
        job_id = JobID.from_int(int(self.r.incr(self.keys.job_counter)))
        fields = {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in info.items()}
        fields.update(job_id=job_id.hex(), status="RUNNING", start_time=str(time.time()))
        with self.r.pipeline() as p:
            p.hset(self.keys.job(job_id.hex()), mapping=fields)
            p.sadd(self.keys.jobs, job_id.hex())
            p.sadd(self.keys.running_jobs, job_id.hex())
            p.execute()
        self.durable()
        return job_id

    def get_job(self, job_hex: str) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.job(job_hex))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def finish_job(self, job_hex: str, status: str, retention_s: float) -> None:
        """Mark the job ended and drop its functions and objects from the tables."""
        now = time.time()
        with self.r.pipeline() as p:
            p.hset(self.keys.job(job_hex), mapping={"status": status, "end_time": str(now)})
            p.zadd(self.keys.ended_jobs, {job_hex: now})
            p.srem(self.keys.running_jobs, job_hex)
            p.delete(self.keys.job_alive(job_hex))
            p.execute()
        # task events stay readable a while after the job (rayr list tasks, timeline); views
        # written later (a task still running) see the marker and expire with them. The
        # marker outlives the retention: a view written after it would make a table no one
        # ever expires.
        keep_ms = max(1, int(retention_s * 1000))
        with self.shard(spread_tag(job_hex)).pipeline(transaction=False) as p:
            p.set(self.keys.task_events_ended(job_hex), b"1", px=max(keep_ms, ENDED_MARKER_MS))
            for key in self.keys.task_events_keys(job_hex):
                p.pexpire(key, keep_ms)
            p.execute()
        for batch in _scan_batches(self.r, self.keys.functions_of_job(job_hex), 1000):
            self.r.delete(*batch)
        for glob in self.keys.object_globs_of_job(job_hex):
            for client, keys in self.scan_spread(glob):
                self._delete_by_tag(client, keys)

    def _delete_by_tag(self, client: Any, keys: list[bytes]) -> None:
        """DEL ``keys`` (spread keys that ``client``'s server holds), a command per tag on a
        Redis Cluster (a DEL may not cross slots)."""
        if not self.spread_only:
            client.delete(*keys)
            return
        by_tag: dict[int | None, list[bytes]] = {}
        for key in keys:
            by_tag.setdefault(self.keys.tag_of(key.decode()), []).append(key)
        for tag, group in by_tag.items():
            self.shard(tag).delete(*group)

    # ------------------------------------------------------------ functions
    def export_function(self, job_hex: str, digest: str, data: bytes) -> str:
        key = self.keys.function(job_hex, digest)
        self.r.set(key, data, nx=True)
        self.durable()
        return key

    def fetch_function(self, key: str) -> bytes | None:
        return self.r.get(key)

    # -------------------------------------------------------------- objects
    def inbox_key(self, worker_hex: str) -> str:
        """The inbox key of a process ('' for none), as the object scripts take it."""
        key = self._inbox_keys.get(worker_hex)
        if key is None:  # a result's owner is nearly always one seen before: no crc32 per result
            if len(self._inbox_keys) >= INBOX_KEYS_KEPT:
                self._inbox_keys.clear()
            key = self._inbox_keys[worker_hex] = self.keys.inbox(worker_hex) if worker_hex else ""
        return key

    def by_object_tag(self, items: Iterable[T], object_hex: Callable[[T], str]) -> list[tuple[int, list[T]]]:
        """``items`` grouped by their object's spread tag on a Redis Cluster (in first-seen
        order); elsewhere one group, as a script there may touch any key."""
        groups: dict[int, list[T]] = {}
        if not self.spread_only:
            items = list(items)
            return [(object_tag(object_hex(items[0])), items)] if items else []
        for item in items:
            groups.setdefault(object_tag(object_hex(item)), []).append(item)
        return list(groups.items())

    def store_objects(
        self, items: Iterable[tuple[bytes, bytes, str]], pipe: Any | None = None
    ) -> int:
        """Write ``(object id, record, owner inbox hex or '')`` entries and wake waiters; how
        many were stored (0 when ``pipe``, a pipeline the caller runs after, carries it: on a
        Redis Cluster the objects are stored now, before the pipeline's commands)."""
        stored = 0
        for tag, group in self.by_object_tag(items, lambda item: item[0].hex()):
            if pipe is not None and not self.spread_only:
                self._store(args=self._store_args(group), client=pipe)
                continue
            stored_now, remote = self._store(args=self._store_args(group), client=self.shard(tag))
            self.run_remote(remote)
            stored += stored_now
        return stored

    def store_objects_commands(self, items: Iterable[tuple[bytes, bytes, str]]) -> list[Tagged]:
        """The STORE_OBJECTS calls as commands for a CommandStream (``spread.send``)."""
        return [(tag, ("EVAL", scripts.STORE_OBJECTS, 0, *self._store_args(group)))
                for tag, group in self.by_object_tag(items, lambda item: item[0].hex())]

    def _store_args(self, items: Iterable[tuple[bytes, bytes, str]]) -> list[Any]:
        args: list[Any] = list(self._spread_args)
        for oid, record, owner in items:
            args.extend((oid, oid.hex(), record, self.inbox_key(owner)))
        return args

    def remote_commands(self, remote: list[Any]) -> list[Tagged]:
        """The commands that do what an object script left to other slots (scripts.SPREAD)."""
        out: list[Tagged] = []
        releases: list[tuple[bytes, str, str, str]] = []
        i = 0
        while i < len(remote):
            if remote[i] == b"P":
                key = remote[i + 1].decode()
                out.append((self.keys.tag_of(key), ("RPUSH", key, remote[i + 2])))
                i += 3
            else:  # b"R"
                oid, ohex, member, owner = remote[i + 1:i + 5]
                releases.append((oid, ohex.decode(), member, owner))
                i += 5
        for tag, group in self.by_object_tag(releases, lambda item: item[1]):
            out.append((tag, self._release_command(group)))
        return out

    def run_remote(self, remote: list[Any]) -> None:
        """Do now what an object script left to other slots (empty off a Redis Cluster)."""
        for tag, command in self.remote_commands(remote):
            reply = self.shard(tag).execute_command(*command)
            if command[0] == "EVAL":  # a release, which may tell an owner elsewhere in turn
                self.run_remote(reply[1])

    def free_objects_commands(self, items: Iterable[tuple[bytes, bool]]) -> list[tuple[int, Command, list]]:
        """FREE_OBJECTS for (object id, force) pairs: (tag, command, the pairs it frees) per
        spread tag on a Redis Cluster, one elsewhere. Its reply: {1/0 per pair, remote}."""
        out = []
        for tag, group in self.by_object_tag(items, lambda item: item[0].hex()):
            args: list[Any] = list(self._spread_args)
            for oid, force in group:
                args.extend((oid.hex(), "1" if force else "0"))
            out.append((tag, ("EVAL", scripts.FREE_OBJECTS, 0, *args), group))
        return out

    def release_holders_commands(self, items: Iterable[tuple[bytes, str, str]]) -> list[Tagged]:
        """RELEASE_HOLDERS for (object id, holder, owner hex) triples."""
        triples = [(oid, oid.hex(), member, self.inbox_key(owner)) for oid, member, owner in items]
        return [(tag, self._release_command(group))
                for tag, group in self.by_object_tag(triples, lambda item: item[1])]

    def _release_command(self, items: list[tuple[bytes, str, Any, Any]]) -> Command:
        args: list[Any] = list(self._spread_args)
        for oid, ohex, member, owner_key in items:
            args.extend((oid, ohex, member, owner_key))
        return ("EVAL", scripts.RELEASE_HOLDERS, 0, *args)

    def tagged(self, command: Command) -> Tagged:
        """A one-key command (its key second) with its key's spread tag."""
        return self.keys.tag_of(command[1]), command

    def task_events_command(
        self, table: str, job_hex: str, flat: list[Any], cap: int, retention_s: float
    ) -> tuple[Any, ...]:
        """RECORD_TASK_EVENTS of ``flat`` (task id, view, task id, view, ...) into ``table``,
        as one command."""
        return ("EVAL", scripts.RECORD_TASK_EVENTS, 3, table, self.keys.task_events_dropped(job_hex),
                self.keys.task_events_ended(job_hex), cap, job_hex, int(retention_s * 1000), *flat)

    def submit_actor_call_commands(self, actor_hex: str, specs: list[bytes]) -> list[tuple[Any, ...]]:
        """``submit_actor_call_command`` for several calls to one actor."""
        mailbox = self.keys.actor_mailbox(actor_hex)
        return [("XADD", mailbox, "NOMKSTREAM", "*", SPEC_FIELD, spec) for spec in specs]

    def submit_actor_call_command(self, actor_hex: str, spec: bytes) -> tuple[Any, ...]:
        """Append a call to the actor's mailbox, as one command: its reply is the entry id, or
        None when the actor is dead or unknown. The mailbox exists from the actor's
        registration until it is marked DEAD (and closed right after), so ``NOMKSTREAM`` is
        the liveness check, with no script per call. It goes on the stream to the mailbox's
        master (``spread.stream_for``)."""
        return self.submit_actor_call_commands(actor_hex, [spec])[0]

    def actor_death_cause(self, actor_hex: str) -> str:
        """Why calls to an actor are refused (its mailbox is gone)."""
        key = self.keys.actor(actor_hex)
        state, cause = self.r.hmget(key, "state", "death_cause")
        if state is None:
            return "the actor does not exist (it may belong to a job that ended)"
        return cause.decode(errors="replace") if cause else "the actor is dead"

    def fetch_or_wait(self, inbox_hex: str, object_hexes: list[str]) -> list[bytes | None]:
        """Records of the objects; those not stored yet will be announced to ``inbox_hex``."""
        found: dict[str, bytes | None] = {}
        for tag, group in self.by_object_tag(object_hexes, lambda h: h):
            replies = self._fetch(args=[self.keys.spread_base, self.keys.inbox(inbox_hex), *group],
                                  client=self.shard(tag))
            found.update(zip(group, replies, strict=True))
        return [found[h] for h in object_hexes]

    def object_records(self, batch: int = 500) -> Iterator[list[tuple[str, bytes]]]:
        """Every (object id hex, record) in the object table, a batch at a time (SCAN + MGET)."""
        family = FAMILIES["obj"]
        for _, keys in self.scan_spread(family + "*", count=batch):
            hexes = [key.decode().rsplit(":", 1)[1] for key in keys]
            yield [(h, record) for h, record in zip(hexes, self.get_objects(hexes), strict=True) if record]

    def get_objects(self, object_hexes: list[str]) -> list[bytes | None]:
        """The records of the objects (None: not stored)."""
        found: dict[str, bytes | None] = {}
        for tag, group in self.by_object_tag(object_hexes, lambda h: h):
            found.update(zip(group, self.shard(tag).mget([self.keys.object(h) for h in group]), strict=True))
        return [found[h] for h in object_hexes]

    def object_holders(self, object_hexes: list[str]) -> list[set[bytes]]:
        """The holders (objr) of each object, a pipeline per spread tag."""
        found: dict[str, set[bytes]] = {}
        for tag, group in self.by_object_tag(object_hexes, lambda h: h):
            with self.shard(tag).pipeline(transaction=False) as p:
                for h in group:
                    p.smembers(self.keys.object_holders(h))
                found.update(zip(group, p.execute(), strict=True))
        return [found[h] for h in object_hexes]

    def delete_objects(self, object_hexes: Iterable[str]) -> None:
        for tag, command in self.delete_objects_commands(object_hexes):
            self.shard(tag).execute_command(*command)

    def delete_objects_commands(self, object_hexes: Iterable[str]) -> list[Tagged]:
        """``delete_objects`` as commands for a CommandStream (``spread.send``)."""
        return [(tag, ("DEL", *[self.keys.object(h) for h in group]))
                for tag, group in self.by_object_tag(object_hexes, lambda h: h)]

    # ---------------------------------------------------------------- tasks
    def stream_client(self, stream: str) -> Any:
        """The client for a stream under a spread tag (a task stream, a mailbox)."""
        return self.shard(self.keys.tag_of(stream))

    def stream_pipeline(self, stream: str) -> Any:
        """A pipeline for commands on ``stream`` (and on objects: on a Redis Cluster
        ``store_objects`` given it stores at once, elsewhere it rides along); the tables' for
        no stream."""
        return (self.stream_client(stream) if stream else self.r).pipeline(transaction=False)

    def ensure_group(self, stream: str) -> None:
        """Create the raylets' consumer group on ``stream`` (and the stream) if missing."""
        try:
            self.stream_client(stream).xgroup_create(stream, TASK_GROUP, id="0", mkstream=True)
            self.durable()
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def ensure_groups(self, streams: Iterable[str]) -> None:
        """``ensure_group`` of each stream, a round trip per master."""
        made = self.per_stream(streams, lambda p, s: p.xgroup_create(s, TASK_GROUP, id="0", mkstream=True))
        for (reply,) in made.values():
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self.durable()

    def per_stream(self, streams: Iterable[str], build: Callable[[Any, str], Any]) -> dict[str, list[Any]]:
        """For each stream, the replies of the commands ``build(pipeline, stream)`` queues on
        it (errors as exception objects): one pipeline per master."""
        out: dict[str, list[Any]] = {}
        for client, names in self.by_server(streams, self.stream_client):
            with client.pipeline(transaction=False) as p:
                counts = []
                for stream in names:
                    before = len(p)
                    build(p, stream)
                    counts.append(len(p) - before)
                replies = p.execute(raise_on_error=False)
            at = 0
            for stream, n in zip(names, counts, strict=True):
                out[stream], at = replies[at:at + n], at + n
        return out

    def task_streams(self) -> list[str]:
        """The names of every announced task stream (``Keys.parse_task_stream`` reads them)."""
        return sorted(s.decode() for s in self.r.smembers(self.keys.task_streams))

    def shape_streams(self) -> dict[str, list[str]]:
        """Scheduler key -> its shared (not targeted) task streams, one per submitter tag."""
        out: dict[str, list[str]] = {}
        for stream in self.task_streams():
            key, node, _tag = self.keys.parse_task_stream(stream)
            if not node:
                out.setdefault(key, []).append(stream)
        return out

    def shapes(self) -> set[str]:
        """The scheduler keys with a shared task stream."""
        return set(self.shape_streams())

    def announce_stream(self, stream: str) -> bool:
        """Record ``stream`` (its group made) among the task streams raylets read; True if it
        is new (then the raylets it concerns must be poked)."""
        added = bool(self.r.sadd(self.keys.task_streams, stream))
        self.durable()
        return added

    def poke(self, node_ids: Iterable[str]) -> None:
        """Tell these nodes' raylets to look for new task streams now."""
        with self.r.pipeline(transaction=False) as p:
            for node_id in node_ids:
                p.xadd(self.keys.node_stream(node_id), control.Poke().fields())
            p.execute()

    # ---------------------------------------------------------------- inboxes
    def inbox_client(self, worker_hex: str) -> Any:
        """The client for a process's inbox keys."""
        return self.shard(spread_tag(worker_hex))

    def push_inbox(self, worker_hex: str, message: bytes) -> None:
        self.inbox_client(worker_hex).rpush(self.keys.inbox(worker_hex), message)

    def drop_inbox(self, worker_hex: str) -> None:
        self.inbox_client(worker_hex).delete(*self.keys.inbox_keys(worker_hex))

    def drop_inboxes(self, worker_hexes: Iterable[str]) -> None:
        """Delete the inboxes of these processes (a round trip per master at most)."""
        for client, group in self.by_server(worker_hexes, self.inbox_client):
            with client.pipeline(transaction=False) as p:
                for worker_hex in group:  # a DEL each: on a Redis Cluster they are in different slots
                    p.delete(*self.keys.inbox_keys(worker_hex))
                p.execute()

    def where(self) -> str:
        """Where this client's Redis is, for error messages."""
        kwargs = self.r.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"

    def retry_or_fail(self, spec: TaskSpec, stream: str, why: str, pipe: Any | None = None) -> bool:
        """A task whose executor died: queue it again on ``stream`` (attempt+1) while
        ``max_retries`` allows, else resolve its returns to WorkerCrashedError. Actor creations
        are always queued again (their restarts are counted by ``max_restarts``).

        Returns:
            Whether it was queued again.
        """
        client = pipe or self.stream_client(stream)
        if spec.kind == ACTOR_CREATION or spec.max_retries == -1 or spec.attempt < spec.max_retries:
            spec_bytes = spec._replace(attempt=spec.attempt + 1).encode()
            client.xadd(stream, entry_fields(spec_bytes, creation=spec.kind == ACTOR_CREATION))
            return True
        self.fail_tasks([spec], WorkerCrashedError(
            f"{spec.function_name}() was lost ({why}), and max_retries={spec.max_retries} "
            "retries were used up."
        ), pipe)
        return False

    def fail_tasks(self, specs: Iterable[TaskSpec], error: BaseException, pipe: Any | None = None) -> None:
        """Resolve every return of ``specs`` to ``error`` (delivered to each owner)."""
        record = records.error_record(serialization.dumps(error))
        items = [(oid, record, spec.owner) for spec in specs for oid in spec.return_ids()]
        if items:
            self.store_objects(items, pipe)

    # --------------------------------------------------------------- actors
    def register_actor(
        self, actor_hex: str, namespace: str, name: str, job_hex: str, fields: dict[str, Any]
    ) -> tuple[bool, str]:
        """Create the actor's mailbox and entry; (False, existing id) if the name is taken.

        The mailbox (under the actor's spread tag, so not in the entry's script on a Redis
        Cluster) comes first: once the entry exists, calls may be sent."""
        mailbox = self.mailbox_client(actor_hex)
        with mailbox.pipeline(transaction=False) as p:
            for stream in (self.keys.actor_mailbox(actor_hex), self.keys.actor_control(actor_hex)):
                p.xgroup_create(stream, ACTOR_GROUP, id="0", mkstream=True)
            p.execute()
        args: list[Any] = [self.keys.prefix, actor_hex, namespace, name, job_hex]
        for key, value in fields.items():
            args.extend((key, value if isinstance(value, bytes) else str(value)))
        created, which = self._register_actor(args=args)
        if not created:  # nobody can know this actor's id: its streams go again
            mailbox.delete(self.keys.actor_mailbox(actor_hex), self.keys.actor_control(actor_hex))
        self.durable()
        return bool(created), which.decode()

    def mailbox_client(self, actor_hex: str) -> Any:
        """The client for an actor's mailbox and control stream."""
        return self.shard(spread_tag(actor_hex))

    def actor_info(self, actor_hex: str) -> dict[str, Any]:
        """The actor's hash; values decoded except the pickled ``creation_spec``."""
        raw = self.r.hgetall(self.keys.actor(actor_hex))
        out: dict[str, Any] = {}
        for k, v in raw.items():
            key = k.decode()
            out[key] = v if key == "creation_spec" else v.decode()
        return out

    def actor_row(self, actor_hex: str) -> ActorInfo | None:
        """The actor's row, typed; None if there is no such actor (or its hash was trimmed)."""
        row = self.actor_info(actor_hex)
        return ActorInfo.from_hash(actor_hex, row) if row else None

    def set_actor_state(self, actor_hex: str, state: str, **fields: Any) -> bool:
        """Move a live actor to ``state``; False (and no change) if it is already DEAD."""
        args: list[Any] = [self.keys.actor_channel, f"{actor_hex}:{state}", "state", state]
        for key, value in fields.items():
            args.extend((key, value if isinstance(value, bytes) else str(value)))
        updated = bool(self._update_live_actor(keys=[self.keys.actor(actor_hex)], args=args))
        self.durable()
        return updated

    def mark_actor_dead(self, actor_hex: str, cause: str) -> list[TaskSpec]:
        """Mark the actor DEAD, then close its mailbox; returns the calls left in it (never to
        run; none if it was dead already). A call sent in between lands in the mailbox and is
        among them; one sent after finds no mailbox, and its caller reads the death cause."""
        if not self._mark_actor_dead(args=[self.keys.prefix, actor_hex, cause, str(time.time())]):
            return []
        return self.close_mailbox(actor_hex)

    def close_mailbox(self, actor_hex: str) -> list[TaskSpec]:
        """Delete a dead actor's mailbox and control stream; the calls that were in it."""
        streams = [self.keys.actor_mailbox(actor_hex), self.keys.actor_control(actor_hex)]
        specs = self._close_mailbox(keys=streams, client=self.mailbox_client(actor_hex))
        return [TaskSpec.decode(s) for s in specs]

    def named_actor(self, namespace: str, name: str) -> str | None:
        found = self.r.hget(self.keys.actor_names(namespace), name)
        return found.decode() if found else None

    def named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of live named actors, in one namespace or all."""
        if namespace is not None:
            keys = [self.keys.actor_names(namespace)]
        else:
            keys = [k.decode() for k in self.r.scan_iter(match=self.keys.actor_names_prefix + "*")]
        out = []
        for key in keys:
            ns = key[len(self.keys.actor_names_prefix):]
            for name in self.r.hkeys(key):
                out.append((ns, name.decode()))
        return sorted(out)

    def job_actors(self, job_hex: str) -> list[str]:
        return sorted(a.decode() for a in self.r.smembers(self.keys.job_actors(job_hex)))

    # ---------------------------------------------------------- cancellation
    def cancel_task(self, stream: str, entry_id: bytes, task_hex: str, flags: str) -> tuple[str, str]:
        """("deleted" | "gone" | "node", node id or "") for a task queued on ``stream``; a
        taken one's node is sent a Cancel naming the consumer that took it."""
        self.r.set(self.keys.cancel_marker(task_hex), flags, ex=86400)
        reply = self._cancel_task(keys=[stream], args=[entry_id], client=self.stream_client(stream))
        status = reply[0].decode()
        if status != "node":
            return status, ""
        consumer = reply[1].decode()
        node = consumer_node(consumer)
        cancel = control.Cancel(bytes.fromhex(task_hex), flags, consumer)
        self.r.xadd(self.keys.node_stream(node), cancel.fields())
        return status, node

    def give_back_tasks(self, stream: str, entry_ids: list[bytes]) -> int:
        """Queue again, at the tail of ``stream``, tasks a worker took there but will not start
        now; returns how many (see scripts.GIVE_BACK_TASKS)."""
        queued = int(self._give_back_tasks(keys=[stream], args=entry_ids, client=self.stream_client(stream)))
        self.durable()  # else a failover could leave them pending under a worker that let go
        return queued

    def cancel_actor_call(self, actor_hex: str, entry_id: bytes, task_hex: str) -> str:
        """"deleted", "gone" or "delivered" for a call in an actor's mailbox."""
        self.r.set(self.keys.cancel_marker(task_hex), b"1", ex=86400)
        reply = self._cancel_actor_call(
            keys=[self.keys.actor_mailbox(actor_hex), self.keys.actor_control(actor_hex)],
            args=[entry_id, task_hex], client=self.mailbox_client(actor_hex),
        )
        return reply.decode()

    def cancel_flags(self, task_hex: str) -> str | None:
        """The flags a task was cancelled with, or None if it was not cancelled."""
        value = self.r.get(self.keys.cancel_marker(task_hex))
        return None if value is None else value.decode()

    # ------------------------------------------------------ placement groups
    def create_placement_group(self, pg_hex: str, namespace: str, name: str, fields: dict[str, Any]) -> bool:
        """Record a new group and wake the monitor; False if ``name`` is taken."""
        if name and not self.r.hsetnx(self.keys.placement_group_names(namespace), name, pg_hex):
            existing = self.r.hget(self.keys.placement_group_names(namespace), name)
            state = self.r.hget(self.keys.placement_group(existing.decode()), "state") if existing else None
            if state not in (None, b"REMOVED"):
                return False
            self.r.hset(self.keys.placement_group_names(namespace), name, pg_hex)
        with self.r.pipeline() as p:
            p.hset(self.keys.placement_group(pg_hex), mapping={"pg_id": pg_hex, **fields})
            p.rpush(self.keys.pending_placement_groups, pg_hex)
            p.xadd(self.keys.monitor_stream, {b"pg": pg_hex.encode()}, maxlen=1000, approximate=True)
            p.execute()
        self.durable()
        return True

    def remove_placement_group(self, pg_hex: str) -> None:
        info = self.placement_group_info(pg_hex)
        if not info or info.get("state") == "REMOVED":
            return
        with self.r.pipeline() as p:
            p.hset(self.keys.placement_group(pg_hex), "state", "REMOVED")
            if info.get("name"):
                p.hdel(self.keys.placement_group_names(info.get("namespace", "")), info["name"])
            p.lrem(self.keys.pending_placement_groups, 0, pg_hex)
            p.xadd(self.keys.monitor_stream, {b"pg_remove": pg_hex.encode()}, maxlen=1000, approximate=True)
            p.execute()

    def placement_group_info(self, pg_hex: str) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.placement_group(pg_hex))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def named_placement_group(self, namespace: str, name: str) -> dict[str, str] | None:
        pg_hex = self.r.hget(self.keys.placement_group_names(namespace), name)
        if pg_hex is None:
            return None
        info = self.placement_group_info(pg_hex.decode())
        return info if info and info.get("state") != "REMOVED" else None

    def placement_groups(self) -> list[dict[str, str]]:
        prefix = self.keys.placement_group_key_prefix
        ids = [key.decode()[len(prefix):] for key in self.r.scan_iter(match=prefix + "*", count=1000)]
        return [info for info in map(self.placement_group_info, ids) if info]

