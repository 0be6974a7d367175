"""The raylet's task readers: they pull task specs from the task streams (``XREADGROUP``),
only as many as the node's free resources can start, and hand them to the main loop.

A task stream lives under its submitter's spread tag (``Keys.task_stream``). On a Redis
Cluster one ``XREADGROUP`` cannot span slots, so each spread tag gets a reader of its own,
with its own blocking connection to the master serving that tag; on any other Redis one
reader reads every stream at once. Readers share the node's budget: each reads what the
budget allows when it reads, and a reader that took tasks unblocks the others so that they
read the smaller budget again; two answered at once may still take more than fits, which
waits in the scheduler's overflow queue as a read over several streams always could.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from rayr import resources as res
from rayr.gcs.client import connect_as, no_retry, on_tag
from rayr.keys import TASK_GROUP

if TYPE_CHECKING:
    from rayr.raylet.raylet import Raylet

log = logging.getLogger("rayr.raylet")
# how often a reader looks at a stream it leaves to a leased worker (see TaskReader.read)
LEASED_POLL_S = 0.002


class TaskReader:
    """Reads the task streams under spread tag ``tag`` (None: under every tag) for ``raylet``."""

    def __init__(self, raylet: Raylet, tag: int | None) -> None:
        self.raylet = raylet
        self.tag = tag
        self.capacity = threading.Event()  # set when resources free up or a stream is new
        # blocked in XREADGROUP: freed room must CLIENT UNBLOCK it (a plain bool: a stale read
        # costs one needless unblock, or a read that ends on its timeout)
        self.parked = False
        self.client_id = 0
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name="rayr-reader" if tag is None else f"rayr-reader-{tag}")

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Read the budget again now (room freed, a new stream, stopping)."""
        self.capacity.set()
        self.unpark()

    def unpark(self) -> None:
        """If blocked in XREADGROUP, return from it (to read the budget again)."""
        if self.parked:
            self.parked = False
            try:
                self.raylet.gcs.shard(self.tag).client_unblock(self.client_id)
            except redis.RedisError:
                pass

    def _connect(self) -> Any:
        raylet = self.raylet
        options: dict[str, Any] = {"retry": no_retry(), "client_name": f"rayr-reader-{raylet.node_id}"}
        if self.tag is None:
            return connect_as(raylet.redis_url, raylet.settings, single_connection_client=True, **options)
        # (a pool that has not connected yet: the one connection goes to the tag's master)
        return on_tag(connect_as(raylet.redis_url, raylet.settings, **options), raylet.keys, self.tag,
                      single_connection=True)

    def _streams(self, key: str) -> list[str]:
        """The streams of scheduler ``key`` this reader reads."""
        streams = self.raylet.streams_of.get(key, ())
        if self.tag is None:
            return list(streams)
        tag_of = self.raylet.keys.tag_of
        return [s for s in streams if tag_of(s) == self.tag]

    def run(self) -> None:
        raylet = self.raylet
        client = self._connect()
        self.client_id = int(client.client_id())
        failed = False
        while not raylet.stopping.is_set():
            try:
                if failed:  # on a new connection: CLIENT UNBLOCK must name its id
                    self.client_id = int(client.client_id())
                    self.take_own_pending(client)
                    failed = False
                if raylet.shapes_dirty.is_set():
                    raylet.shapes_dirty.clear()
                    raylet.refresh_shapes()
                with raylet.lock:
                    budget = raylet.sched.read_budget(raylet.in_transit)
                    leased = raylet.sched.leased_streams(raylet.in_transit)
                streams = {key: self._streams(key) for key in budget}
                budget = {key: n for key, n in budget.items() if streams[key]}
                if not budget:
                    # nothing fits now (or nothing of ours): wait for room or a new stream
                    self.capacity.wait(1.0)
                    self.capacity.clear()
                    continue
                self.read(client, budget, streams, leased)
            except redis.RedisError:
                self.parked = False
                failed = True
                # read the streams again once Redis is back: a poke about a new stream may have
                # been taken (and the flag cleared) by a refresh that this very error cut short,
                # and then nothing would ever read that stream's tasks here
                raylet.shapes_dirty.set()
                if raylet.stopping.is_set():
                    return
                log.exception("reading task streams failed; retrying")
                time.sleep(0.5)
        client.close()

    def read(self, client: Any, budget: dict[str, int], streams_of: dict[str, list[str]],
             leased: set[str]) -> None:
        """One read of the streams of the keys ``budget`` names. A stream a worker here holds
        a lease on is only looked at, not waited on: Redis hands a new entry to the reader
        that blocked first, which would be this reader, so a sync caller's next task would go
        to another worker (a raylet hop, and a 100 MB argument mapped again) instead of the
        leased one waiting for it. What the leased workers leave behind is read within
        LEASED_POLL_S."""
        streams: dict[str, str] = {}
        looked: dict[str, str] = {}
        nested: dict[str, str] = {}
        count = 1
        for key, n in budget.items():
            mine = streams_of[key]
            for stream in mine:
                (looked if stream in leased else streams)[stream] = ">"
                if res.is_nested(key):
                    nested[stream] = ">"
            # COUNT applies per stream: a key's budget shared over its streams (submitters)
            count = max(count, math.ceil(n / len(mine)))
        def take(reply: Any) -> None:
            self.raylet.take(reply, self)
        if nested and len(nested) < len(streams) + len(looked):
            # tasks started by running tasks first: a parent blocked in get() lent its CPU
            # for its children, not for the next parent
            reply = client.xreadgroup(TASK_GROUP, self.raylet.node_id, nested, count=count)
            if reply and any(entries for _name, entries in reply):
                take(reply)
                return
        if looked:
            reply = client.xreadgroup(TASK_GROUP, self.raylet.node_id, looked, count=count)
            if reply and any(entries for _name, entries in reply):
                take(reply)
                return
            if not streams:
                self.capacity.wait(LEASED_POLL_S)
                self.capacity.clear()
                return
        # While blocked here, freed room or a new stream unblocks us (CLIENT UNBLOCK).
        self.parked = True
        reply = client.xreadgroup(TASK_GROUP, self.raylet.node_id, streams, count=count,
                                  block=int(LEASED_POLL_S * 1000) if looked else 1000)
        self.parked = False
        take(reply)

    def take_own_pending(self, client: Any) -> None:
        """After a failed read: take what it may have read without its reply reaching us
        (pending under this node's consumer, and not among the tasks we know of)."""
        raylet = self.raylet
        with raylet.lock:
            keys = list(raylet.sched.shapes)
            known = raylet.known_entries()
        streams = {stream: "0" for key in keys for stream in self._streams(key)}
        if not streams:
            return
        reply = client.xreadgroup(TASK_GROUP, raylet.node_id, streams, count=10_000)
        lost = [
            (name, [(eid, fields or {}) for eid, fields in entries if eid not in known])
            for name, entries in reply or []
        ]
        if any(entries for _, entries in lost):
            log.warning("taking back %d task(s) a failed read left pending",
                        sum(len(entries) for _, entries in lost))
            raylet.take(lost, self)
