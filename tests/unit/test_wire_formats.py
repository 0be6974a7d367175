"""Wire formats: node control-stream messages and task-stream entries, each built and read
in one place, survive their trip through stream-entry fields."""

from __future__ import annotations

import pickle

import pytest

from rayr import protocol
from rayr.gcs import control
from rayr.task_spec import CREATION_FIELD, RESTART_FIELD, SPEC_FIELD, entry_fields


@pytest.mark.parametrize("message", [
    control.Poke(),
    control.Kill("ab" * 16),
    control.Cancel(bytes(range(16)), "force,recursive", "node.worker"),
    control.Cancel(bytes(16)),
    control.Pull(bytes(range(20)), "cd" * 16, 123_456_789),
    control.ReserveBundles("ef" * 14, [(0, {"CPU": 1.0}), (2, {"GPU": 0.5, "custom": 2.0})], "reply:key"),
    control.ReleaseBundles("ef" * 14),
    control.JobDone("00000007"),
    control.PrepareEnv("0123abcd"),
    control.ListLogs("reply:key"),
    control.ReadLog("worker-ab.log", -4096, 1 << 20, "reply:key"),
])
def test_round_trip(message):
    # what Redis hands back: the same bytes fields
    assert control.parse(dict(message.fields())) == [message]


def test_an_entry_of_no_known_kind_carries_nothing():
    assert control.parse({b"something": b"else"}) == []


def test_task_stream_entries():
    assert entry_fields(b"spec") == {SPEC_FIELD: b"spec"}
    assert entry_fields(b"spec", creation=True) == {SPEC_FIELD: b"spec", CREATION_FIELD: b"1"}
    restart = entry_fields(b"spec", creation=True, restart=True)
    assert restart == {SPEC_FIELD: b"spec", CREATION_FIELD: b"1", RESTART_FIELD: b"1"}


def test_inbox_messages():
    from rayr.gcs import records as rec

    oid = bytes(range(20))
    assert rec.parse_message(rec.object_message(oid, rec.value_record(b"frame"))) == (oid, b"Vframe")
    assert rec.parse_message(rec.MSG_STOP) is None
    assert rec.owner_message(rec.container_message(oid)) == (rec.MSG_CONTAINER, oid)
    assert rec.owner_message(rec.rebuild_ack(oid)) == (rec.MSG_REBUILD_ACK, oid)
    request = rec.rebuild_request(oid, "ab" * 16, "cd" * 12)
    assert rec.owner_message(request) == (rec.MSG_REBUILD, oid)
    assert rec.parse_rebuild_request(request) == (oid, "ab" * 16, "cd" * 12)
    assert rec.owner_message(rec.MSG_FREED + oid) == (rec.MSG_FREED, oid)
    assert rec.parse_stored(rec.stored_record("ef" * 16, 12345)) == ("ef" * 16, 12345)



def test_lua_scripts_spell_no_key_family_of_their_own():
    import re
    from pathlib import Path

    from rayr.gcs import scripts
    from rayr.keys import FAMILIES, Keys, spread_tag

    source = Path(scripts.__file__).read_text()
    assert not re.findall(r"prefix \.\. '(?!<<)", source), "a script spells a key family itself"
    filled = [v for k, v in vars(scripts).items() if isinstance(v, str) and "redis.call" in v]
    assert filled and not any("<<" in v for v in filled)
    keys = Keys("c")
    built = {"actor": keys.actor("ab"), "actor_names": keys.actor_names("ab"),
             "job_actors": keys.job_actors("ab")}
    for family, key in built.items():
        assert key == keys.prefix + FAMILIES[family] + "ab"
    # an object's keys carry the spread tag its id's tenth hex digit names, an inbox its own
    oid = "0123456789abcdef0123456789abcdef01234567"
    spread = {"obj": keys.object(oid), "objw": keys.object_waiters(oid), "objr": keys.object_holders(oid),
              "objc": keys.object_contents(oid)}
    for family, key in spread.items():
        assert key == "rayr:{c/9}:" + FAMILIES[family] + oid
        assert keys.tag_of(key) == 9
    assert keys.inbox("ab") == keys.spread_prefix(spread_tag("ab")) + FAMILIES["inbox"] + "ab"
    for family, key in (("actor_mb", keys.actor_mailbox("ab")), ("actor_ctl", keys.actor_control("ab"))):
        assert key == keys.spread_prefix(spread_tag("ab")) + FAMILIES[family] + "ab"
    assert keys.tag_of(keys.actor("ab")) is None
    # a task stream carries its submitter's tag; its name gives back key, target and tag
    node = "f" * 32
    for key, target in (("CPU=1", ""), ("@CPU=1|env=x:y", ""), ("~CPU=0.5,GPU=1", node), ("~@CPU=1", node)):
        stream = keys.task_stream(key, target, 11)
        assert stream.startswith("rayr:{c/11}:tasks:")
        assert keys.parse_task_stream(stream) == (key, target, 11)
    for bad in (keys.node_stream(node), "rayr:{c/1}:inbox:ab", "rayr:{d/1}:tasks:shape:CPU=1"):
        with pytest.raises(ValueError, match="not a task stream"):
            keys.parse_task_stream(bad)
    assert keys.actor_channel == keys.prefix + FAMILIES["actor_events"]
    assert keys.dead_actors == keys.prefix + FAMILIES["dead_actors"]


@pytest.mark.parametrize("message", [
    protocol.RunTasks([("tasks:shape:CPU=1", b"1-0", b"spec")], True),
    protocol.BecomeActor("tasks:actor:CPU=1", b"2-0", b"spec", False),
    protocol.Exit(),
    protocol.Ready(1234),
    protocol.Done(17),
    protocol.Blocked(True),
    protocol.ActorReady("ab" * 16),
    protocol.ActorFailed(),
])
def test_raylet_worker_messages_round_trip_as_plain_tuples(message):
    wire = protocol.encode(message)
    assert type(wire) is tuple and wire[0] == protocol.KIND[type(message)]
    back = protocol.decode(pickle.loads(pickle.dumps(wire)))  # what the socket pair delivers
    assert back == message and type(back) is type(message)


@pytest.mark.parametrize("wire, what", [
    (("nonsense", 1), "unknown"), (("done",), "malformed"), ((), "unknown"),
])
def test_a_bad_raylet_worker_message_is_named(wire, what):
    with pytest.raises(ValueError, match=what):
        protocol.decode(wire)
