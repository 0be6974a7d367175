"""Objects and inboxes under spread tags on a real Redis Cluster (three masters on loopback):
an object's keys live on the master of its id's tag (its owner's), each script touches one
slot, and what it leaves to other slots (a waiter's or an owner's inbox elsewhere, a
contained ref of another tag) follows in commands of its own."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from rayr.gcs import records as rec
from rayr.gcs import scripts, spread
from rayr.gcs.address import slot_of, spread_slot
from rayr.gcs.client import GcsClient, connect
from rayr.gcs.command_stream import CommandStream
from rayr.keys import Keys, object_tag, spread_tag, with_object_tag
from rayr.testing_redis import RedisClusterSet

PASSWORD = "spread-test-pw"
NAME = "spread-test"
KEYS = Keys(NAME)


def _oid(tag: int) -> bytes:
    return b"\0\0\0\1" + with_object_tag(os.urandom(12), tag) + b"\0\0\0\1"


def _worker_on_another_master(cset: RedisClusterSet, tag: int) -> str:
    """A worker id whose inbox lives on another master than spread tag ``tag``'s keys."""
    master = cset.owner_of(spread_slot(KEYS, tag))
    while True:
        worker = os.urandom(12).hex()
        if cset.owner_of(spread_slot(KEYS, spread_tag(worker))) != master:
            return worker


def _on(cset: RedisClusterSet, key: str) -> list[int]:
    """The masters holding ``key`` (only the one serving its slot can)."""
    master = cset.owner_of(key_slot(key.encode()))
    client: Any = cset.masters[master].client()
    try:
        return [master] if client.exists(key) else []
    finally:
        client.close()


def _gcs(cset: RedisClusterSet) -> GcsClient:
    return GcsClient(connect(cset.url, PASSWORD, cluster_name=NAME), KEYS)


def test_a_store_touches_its_objects_slot_and_tells_other_slots_after(redis_cluster_set):
    cset = redis_cluster_set
    gcs = _gcs(cset)
    try:
        assert gcs.spread_only
        owner = os.urandom(12).hex()
        oid = _oid(spread_tag(owner))  # as its owner makes it
        waiter = _worker_on_another_master(cset, object_tag(oid.hex()))
        assert gcs.fetch_or_wait(waiter, [oid.hex()]) == [None]
        record = rec.value_record(b"frame")
        # the script alone: it pushes to the owner's inbox (its slot) and hands back the waiter's
        shard = gcs.shard(object_tag(oid.hex()))
        stored, remote = shard.execute_command("EVAL", scripts.STORE_OBJECTS, 0, KEYS.spread_base, "1",
                                               oid, oid.hex(), record, KEYS.inbox(owner))
        message = rec.object_message(oid, record)
        assert stored == 1 and remote == [b"P", KEYS.inbox(waiter).encode(), message]
        # the record and the owner's inbox share a slot; the waiter's inbox is not there yet
        slot = spread_slot(KEYS, object_tag(oid.hex()))
        assert key_slot(KEYS.object(oid.hex()).encode()) == key_slot(KEYS.inbox(owner).encode()) == slot
        master = cset.owner_of(slot)
        assert _on(cset, KEYS.object(oid.hex())) == _on(cset, KEYS.inbox(owner)) == [master]
        assert _on(cset, KEYS.inbox(waiter)) == []
        gcs.run_remote(remote)
        assert gcs.inbox_client(waiter).lrange(KEYS.inbox(waiter), 0, -1) == [message]
        # store_objects does both; fetch_or_wait and get_objects find records across tags
        other = _oid(spread_tag(waiter))
        assert gcs.store_objects([(other, record, waiter)]) == 1
        assert gcs.fetch_or_wait(owner, [oid.hex(), other.hex()]) == [record, record]
        assert gcs.get_objects([other.hex(), oid.hex()]) == [record, record]
        gcs.delete_objects([oid.hex(), other.hex()])
        assert gcs.get_objects([oid.hex(), other.hex()]) == [None, None]
    finally:
        gcs.close()


def test_a_batch_store_hands_back_other_slots_messages_in_order(redis_cluster_set):
    gcs = _gcs(redis_cluster_set)
    try:
        owner = os.urandom(12).hex()
        oids = [_oid(spread_tag(owner)) for _ in range(3)]
        waiter = _worker_on_another_master(redis_cluster_set, spread_tag(owner))
        assert gcs.fetch_or_wait(waiter, [oids[0].hex(), oids[2].hex()]) == [None, None]
        record = rec.value_record(b"frame")
        args = [a for o in oids for a in (o, o.hex(), record, KEYS.inbox(owner))]
        stored, remote = gcs.shard(spread_tag(owner)).execute_command(
            "EVAL", scripts.STORE_OBJECTS, 0, KEYS.spread_base, "1", *args)
        messages = [rec.object_message(o, record) for o in oids]
        assert stored == 3
        to_waiter = KEYS.inbox(waiter).encode()
        assert remote == [b"P", to_waiter, messages[0], b"P", to_waiter, messages[2]]
        assert gcs.shard(spread_tag(owner)).lrange(KEYS.inbox(owner), 0, -1) == messages
    finally:
        gcs.close()


@pytest.fixture
def gcs_and_stream(redis_cluster_set: RedisClusterSet) -> Iterator[tuple[GcsClient, CommandStream]]:
    gcs = _gcs(redis_cluster_set)
    stream = CommandStream(redis_cluster_set.url, PASSWORD, cluster_name=NAME)
    try:
        yield gcs, stream
    finally:
        stream.close()
        gcs.close()


def test_a_freed_container_releases_what_it_holds_in_other_slots(redis_cluster_set, gcs_and_stream):
    cset, (gcs, stream) = redis_cluster_set, gcs_and_stream
    try:
        container_owner = os.urandom(12).hex()
        held_owner = _worker_on_another_master(cset, spread_tag(container_owner))
        container, held = _oid(spread_tag(container_owner)), _oid(spread_tag(held_owner))
        member = b"o:" + container.hex().encode()
        entry = held + held.hex().encode() + KEYS.inbox(held_owner).encode()
        commands = [("SADD", KEYS.object_holders(held.hex()), member),
                    ("RPUSH", KEYS.object_contents(container.hex()), entry)]
        spread.send(stream, gcs, [gcs.tagged(c) for c in commands])
        assert stream.flush(timeout=30)
        assert gcs.object_holders([held.hex()]) == [{member}]
        done = threading.Event()
        got: list[Any] = []
        (tag, command, _), = gcs.free_objects_commands([(container, False)])

        def on_replies(replies: list[Any]) -> None:
            got.extend(replies)
            done.set()

        # the free runs on the container's master; the release follows on the held one's, and
        # ``then`` (a tables' command) only after both
        spread.send(stream, gcs, [(tag, command)], on_replies, then=[("INCR", KEYS.prefix + "after")])
        assert done.wait(30)
        assert got[0][0] == [1] and got[1] == 1, got
        assert gcs.object_holders([held.hex()]) == [set()]
        inbox = gcs.inbox_client(held_owner).lrange(KEYS.inbox(held_owner), 0, -1)
        assert inbox == [rec.MSG_FREED + held]  # its owner heard that the last holder went
    finally:
        gcs.r.delete(KEYS.prefix + "after")


def test_an_actors_mailbox_lives_under_its_tag_and_closes_after_its_death(
        redis_cluster_set, gcs_and_stream):
    cset, (gcs, stream) = redis_cluster_set, gcs_and_stream
    tables = cset.owner_of(slot_of(NAME))
    actor = next(a for a in (os.urandom(16).hex() for _ in range(1000))
                 if cset.owner_of(spread_slot(KEYS, spread_tag(a))) != tables)
    assert gcs.register_actor(actor, "ns", "", "", {"class_name": "A", "state": "ALIVE"}) == (True, actor)
    mailbox = KEYS.actor_mailbox(actor)
    assert _on(cset, mailbox) == [cset.owner_of(spread_slot(KEYS, spread_tag(actor)))]
    command = gcs.submit_actor_call_command(actor, b"spec-1")
    got: list[Any] = []
    spread.stream_for(stream, gcs, mailbox).send([command], got.extend)
    assert stream.flush(timeout=30) and got and got[0] is not None
    task = "ef" * 16
    assert gcs.cancel_actor_call(actor, got[0], task) == "deleted"  # marker and mailbox: two slots
    assert gcs.cancel_flags(task) == "1"
    spread.stream_for(stream, gcs, mailbox).send([gcs.submit_actor_call_command(actor, b"spec-2")])
    assert stream.flush(timeout=30)
    assert gcs._mark_actor_dead(args=[KEYS.prefix, actor, "gone", "1"]) == 1
    left = gcs.mailbox_client(actor).xrange(mailbox)
    assert [fields[b"s"] for _, fields in left] == [b"spec-2"]
    assert gcs.mailbox_client(actor).execute_command("EVAL", scripts.CLOSE_MAILBOX, 2, mailbox,
                                                      KEYS.actor_control(actor)) == [b"spec-2"]
    assert _on(cset, mailbox) == []
    got.clear()
    spread.stream_for(stream, gcs, mailbox).send([gcs.submit_actor_call_command(actor, b"spec-3")],
                                                 got.extend)
    assert stream.flush(timeout=30) and got == [None]  # no mailbox: the caller's dead-actor path
