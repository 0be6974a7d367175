"""Clients of a Redis Cluster address follow the slot of their rayr cluster's keys: when the
slot moves to another master, the next command is answered MOVED, and the connection looks
the slot up again and sends the command there (a plain client by its retry, the command
stream by its resend)."""

from __future__ import annotations

from typing import Any

from rayr.gcs.address import slot_of
from rayr.gcs.client import GcsClient, connect
from rayr.gcs.command_stream import CommandStream
from rayr.keys import SPREAD_TAGS, Keys
from rayr.testing_redis import RedisClusterSet

PASSWORD = "slot-test-pw"
NAME = "slot-test"


def _holder(cset: RedisClusterSet, key: str) -> int | None:
    for i, master in enumerate(cset.masters):
        client: Any = master.client()
        try:
            if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot_of(NAME)) and client.exists(key):
                return i
        finally:
            client.close()
    return None


def test_a_client_and_a_command_stream_follow_their_slot_to_another_master(redis_cluster_set):
    cset, key = redis_cluster_set, Keys(NAME).prefix + "k"
    client = connect(cset.url, PASSWORD, cluster_name=NAME)
    stream = CommandStream(cset.url, PASSWORD, cluster_name=NAME)
    try:
        first = cset.owner_of(slot_of(NAME))
        client.set(key, "plain")
        assert _holder(cset, key) == first
        stream.send([("APPEND", key, "+stream")])
        assert stream.flush(timeout=30)
        assert client.get(key) == b"plain+stream"
        client.delete(key)  # SETSLOT NODE moves an empty slot
        second = (first + 1) % len(cset.masters)
        cset.move_slot(slot_of(NAME), second)
        client.set(key, "moved")  # MOVED, looked up again, sent again
        assert _holder(cset, key) == second
        got: list = []
        stream.send([("APPEND", key, "+stream")], got.append)
        assert stream.flush(timeout=30)
        assert got == [[len(b"moved+stream")]]  # answered once, by the new master
        assert client.get(key) == b"moved+stream" and _holder(cset, key) == second
    finally:
        stream.close()
        client.delete(key)
        client.close()


def _slot_lookups(cset: RedisClusterSet) -> int:
    total = 0
    for master in cset.masters:
        client: Any = master.client()
        try:
            total += int(client.info("commandstats").get("cmdstat_cluster|slots", {}).get("calls", 0))
        finally:
            client.close()
    return total


def test_new_connections_share_one_slot_lookup(redis_cluster_set):
    """A process's connections (any pool, any spread tag) share the slot map of the last
    CLUSTER SLOTS instead of each asking again; a MOVED makes them ask (the test above)."""
    cset = redis_cluster_set
    before = _slot_lookups(cset)
    clients = [connect(cset.url, PASSWORD, cluster_name=NAME) for _ in range(6)]
    try:
        for client in clients:
            assert client.ping()
        gcs = GcsClient(clients[0], Keys(NAME))
        for tag in range(SPREAD_TAGS):
            assert gcs.shard(tag).ping()
        assert _slot_lookups(cset) - before <= 1
    finally:
        for client in clients:
            client.close()
