"""Checks a head makes of a Redis it did not start, before it runs anything on it.

``gather`` reads what matters from the server (the only I/O here); ``assess`` is a pure
function from those facts to errors (the head refuses to start) and warnings (it starts and
says them), each saying what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from rayr.gcs.address import slot_pool, spread_slot
from rayr.keys import Keys

MIN_VERSION = (6, 2)  # XAUTOCLAIM-era stream commands, GETDEL, EXAT: what rayr is tested on


@dataclass(frozen=True)
class ServerFacts:
    """What a head needs to know of a Redis before it uses it."""

    version: str
    role: str  # "master" or "slave"
    cluster_enabled: bool
    maxmemory: int
    maxmemory_policy: str
    aof_enabled: bool
    save: str | None  # CONFIG GET save; None where CONFIG is refused (managed Redis)
    cluster_name: str
    live_nodes: int  # of this cluster name
    supervisor_alive: bool
    cluster_address: bool = False  # rayr was given a Redis Cluster address (redis+cluster://)
    spread_denied: bool = False  # an ACL lets us at the tables' keys but not the spread keys


@dataclass
class Findings:
    """What ``assess`` concluded: errors stop the head; warnings are printed."""

    errors: list[str]
    warnings: list[str]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def assess(facts: ServerFacts) -> Findings:
    """Errors and warnings about running a rayr head on the server ``facts`` describe."""
    errors: list[str] = []
    warnings: list[str] = []
    if _version_tuple(facts.version) < MIN_VERSION:
        errors.append(f"Redis {facts.version} is too old: rayr needs {'.'.join(map(str, MIN_VERSION))} "
                      "or newer.")
    if facts.cluster_enabled and not facts.cluster_address:
        errors.append("this is a node of a Redis Cluster: give rayr the cluster's address, "
                      "redis+cluster://h1:7000,h2:7001 (some of its nodes), so it finds the node that "
                      "serves its keys and follows them when they move.")
    if facts.cluster_address and not facts.cluster_enabled:
        errors.append("this Redis is not a Redis Cluster (cluster_enabled:0): give it as redis://host:port, "
                      "or redis+sentinel://... for a Sentinel-managed one.")
    if facts.role != "master":
        errors.append("this Redis is a read-only replica: give the master's address, or the Sentinels' "
                      "(redis+sentinel://h1:26379,h2:26379/mymaster) so rayr follows failovers.")
    if facts.maxmemory and facts.maxmemory_policy != "noeviction":
        errors.append(f"maxmemory-policy is {facts.maxmemory_policy} (maxmemory {facts.maxmemory} bytes): "
                      "when full, Redis would evict rayr's keys (queued tasks, objects, liveness). Set "
                      "maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in "
                      "redis.conf), or give rayr a Redis of its own.")
    if facts.live_nodes or facts.supervisor_alive:
        what = f"{facts.live_nodes} live node(s)"
        what += " and a job supervisor" if facts.supervisor_alive else ""
        errors.append(f"the cluster name {facts.cluster_name!r} is in use on this Redis ({what}): choose "
                      "another with --cluster-name / RAYR_CLUSTER_NAME (or another database, /N at the "
                      "end of the address), or stop that cluster first.")
    if facts.spread_denied:
        pattern = Keys(facts.cluster_name).spread_pattern
        errors.append(f"the Redis user may not use the keys {pattern}, which carry object transfers "
                      f"between nodes: add ~{pattern} to its ACL rules (docs/clusters/existing-redis.md "
                      "lists them all).")
    if not facts.aof_enabled and not facts.save:
        unknown = " as far as rayr can tell (CONFIG GET is refused)" if facts.save is None else ""
        warnings.append(f"this Redis keeps no persistence{unknown}: if it restarts, the cluster's queued "
                        "tasks, actors and objects are gone. appendonly yes (appendfsync everysec) "
                        "makes a restart survivable.")
    return Findings(errors, warnings)


def gather(client: Any, cluster_name: str, cluster_address: bool = False) -> ServerFacts:
    """Read the facts ``assess`` needs from the server ``client`` talks to (for a
    ``cluster_address``, the Redis Cluster master serving the cluster's keys)."""
    keys = Keys(cluster_name)
    info = client.info()
    try:
        save: str | None = _decode(client.config_get("save").get(b"save", b""))
    except redis.ResponseError:  # CONFIG is renamed or refused on many managed services
        save = None
    nodes = [n.decode() if isinstance(n, bytes) else n for n in client.smembers(keys.nodes)]
    with client.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.exists(keys.node_alive(node))
        pipe.exists(keys.supervisor_alive)
        alive = pipe.execute()
    return ServerFacts(
        spread_denied=_spread_denied(client, keys),
        version=_decode(info.get("redis_version", "0")),
        role=_decode(info.get("role", "master")),
        cluster_enabled=bool(info.get("cluster_enabled", 0)),
        maxmemory=int(info.get("maxmemory", 0)),
        maxmemory_policy=_decode(info.get("maxmemory_policy", "noeviction")),
        aof_enabled=bool(info.get("aof_enabled", 0)),
        save=save,
        cluster_name=cluster_name,
        live_nodes=sum(alive[:-1]),
        supervisor_alive=bool(alive[-1]),
        cluster_address=cluster_address,
    )


def _spread_denied(client: Any, keys: Keys) -> bool:
    """Whether an ACL refuses us the spread keys (asked of the master serving one of them)."""
    probe = keys.spread_prefix(0) + "probe"
    pool = slot_pool(client.connection_pool, spread_slot(keys, 0))
    spread = client if pool is None else redis.Redis(connection_pool=pool)
    try:
        spread.exists(probe)
    except redis.exceptions.NoPermissionError:  # redis-py's name for a NOPERM reply
        return True
    finally:
        if spread is not client:
            pool.disconnect()  # type: ignore[union-attr]
    return False


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
