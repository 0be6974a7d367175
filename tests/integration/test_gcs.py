"""The GCS tables and Lua scripts against a real redis-server."""

from __future__ import annotations

import os
import time

import pytest
import redis

from rayr.config import Settings
from rayr.gcs import records as rec
from rayr.gcs.client import NODE_ALIVE, NODE_DEAD, GcsClient, connect
from rayr.gcs.rows import NodeInfo
from rayr.keys import TASK_GROUP, Keys
from rayr.monitor.history import sweep_dead_mailboxes
from rayr.monitor.monitor import Monitor, restart_grace_s
from rayr.task_spec import ACTOR_CALL, TaskSpec


@pytest.fixture
def gcs(redis_url):
    keys = Keys(f"itest-{os.urandom(4).hex()}")
    client = connect(redis_url)
    yield GcsClient(client, keys)
    for pattern in (keys.prefix + "*", keys.spread_pattern):
        for key in client.scan_iter(match=pattern):
            client.delete(key)
    client.close()


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def test_store_notifies_owner_and_waiters(gcs):
    # a waiter registers before the object exists
    assert gcs.fetch_or_wait("waiter", [oid(1).hex()]) == [None]
    record = rec.value_record(b"frame")
    assert gcs.store_objects([(oid(1), record, "owner")]) == 1
    expected = rec.object_message(oid(1), record)
    assert gcs.r.lrange(gcs.keys.inbox("owner"), 0, -1) == [expected]
    assert gcs.r.lrange(gcs.keys.inbox("waiter"), 0, -1) == [expected]
    assert not gcs.r.exists(gcs.keys.object_waiters(oid(1).hex()))
    # a later reader finds it directly and is not registered
    assert gcs.fetch_or_wait("late", [oid(1).hex()]) == [record]
    assert rec.parse_message(expected) == (oid(1), record)


def test_owner_is_not_notified_twice(gcs):
    gcs.fetch_or_wait("owner", [oid(2).hex()])
    gcs.store_objects([(oid(2), rec.value_record(b"v"), "owner")])
    assert gcs.r.llen(gcs.keys.inbox("owner")) == 1


def test_a_batch_store_pushes_each_inbox_its_messages_in_order(gcs):
    # over 1000 objects: the script's commands go in chunks (Lua's unpack is bounded)
    n = 2500
    items = [(oid(100 + i), rec.value_record(b"v%d" % i), "even" if i % 2 == 0 else "odd") for i in range(n)]
    assert gcs.fetch_or_wait("waiter", [oid(100 + i).hex() for i in (7, 1500, 2499)]) == [None] * 3
    assert gcs.fetch_or_wait("even", [oid(100 + 4).hex()]) == [None]  # the owner: told once
    assert gcs.store_objects(items) == n
    msgs = [rec.object_message(o, r) for o, r, _ in items]
    assert gcs.r.lrange(gcs.keys.inbox("even"), 0, -1) == msgs[0::2]
    assert gcs.r.lrange(gcs.keys.inbox("odd"), 0, -1) == msgs[1::2]
    assert gcs.r.lrange(gcs.keys.inbox("waiter"), 0, -1) == [msgs[7], msgs[1500], msgs[2499]]
    assert gcs.get_objects([o.hex() for o, _, _ in items]) == [r for _, r, _ in items]
    assert not any(gcs.r.exists(gcs.keys.object_waiters(oid(100 + i).hex())) for i in (4, 7, 1500, 2499))


def test_binary_records_survive(gcs):
    record = rec.value_record(bytes(range(256)) * 4)
    gcs.store_objects([(oid(3), record, "")])
    assert gcs.get_objects([oid(3).hex(), oid(4).hex()]) == [record, None]
    gcs.delete_objects([oid(3).hex()])
    assert gcs.get_objects([oid(3).hex()]) == [None]


def test_stored_record_format():
    record = rec.stored_record("ab" * 16, 12345)
    assert record[0] == rec.STORED
    assert rec.parse_stored(record) == ("ab" * 16, 12345)


def test_jobs_get_increasing_ids_and_cleanup(gcs):
    a = gcs.new_job({"driver_pid": 1})
    b = gcs.new_job({"driver_pid": 2})
    assert b.int() == a.int() + 1
    assert gcs.get_job(a.hex())["status"] == "RUNNING"
    key = gcs.export_function(a.hex(), "d1", b"fn")
    gcs.store_objects([(a.binary() + bytes(16), rec.value_record(b"x"), "")])
    gcs.finish_job(a.hex(), "SUCCEEDED", retention_s=600)
    assert gcs.get_job(a.hex())["status"] == "SUCCEEDED"
    assert gcs.fetch_function(key) is None
    assert gcs.get_objects([(a.binary() + bytes(16)).hex()]) == [None]


def test_function_export_is_write_once(gcs):
    key = gcs.export_function("00000001", "digest", b"first")
    gcs.export_function("00000001", "digest", b"second")
    assert gcs.fetch_function(key) == b"first"


def test_monitor_declares_silent_nodes_dead(gcs):
    settings = Settings(cluster_name="x", node_timeout_s=0.2)
    # a Redis that just started excuses lapsed liveness keys for a while (see
    # Monitor._redis_just_started): run alone, this test meets a fresh session Redis
    while int(gcs.r.info("server")["uptime_in_seconds"]) < restart_grace_s(settings):
        time.sleep(0.1)
    gcs.register_node(NodeInfo("n1", resources_total={"CPU": 1}), 0.2)
    gcs.register_node(NodeInfo("n2", resources_total={"CPU": 1}), 30)
    monitor = Monitor(gcs, settings)
    assert monitor.check_nodes() == []
    time.sleep(0.3)
    assert monitor.check_nodes() == ["n1"]
    states = {n.node_id: n.state for n in gcs.list_nodes()}
    assert states == {"n1": NODE_DEAD, "n2": NODE_ALIVE}
    assert "heartbeat" in gcs.list_nodes()[0].death_reason
    assert [n.node_id for n in gcs.alive_nodes()] == ["n2"]


def test_ensure_group_is_idempotent(gcs):
    stream = gcs.keys.shape_stream("CPU=1", 3)
    gcs.ensure_group(stream)
    gcs.ensure_group(stream)
    assert gcs.r.xinfo_groups(stream)[0]["name"] == b"raylets"


def test_tasks_given_back_go_to_the_tail_and_leave_the_takers_pending_list(gcs):
    """A leased worker whose task blocks gives back what it took and has not started: each
    entry is queued again, fields unchanged, behind what waits, and no longer pending."""
    stream = gcs.keys.shape_stream("CPU=1", 5)
    gcs.ensure_group(stream)
    ids = [gcs.r.xadd(stream, {b"s": f"task{i}".encode(), b"n": b"1"}) for i in range(4)]
    taken = gcs.r.xreadgroup(TASK_GROUP, "node.worker", {stream: ">"}, count=3)[0][1]
    assert [entry_id for entry_id, _ in taken] == ids[:3]
    gone = gcs.r.xadd(stream, {b"x": b"y"})  # taken, then deleted (as a cancel does)
    gcs.r.xreadgroup(TASK_GROUP, "node.worker", {stream: ">"}, count=2)
    gcs.r.xdel(stream, gone)
    assert gcs.give_back_tasks(stream, [ids[1], ids[2], gone]) == 2
    fields = [f for _, f in gcs.r.xrange(stream)]
    assert [f[b"s"] for f in fields] == [b"task0", b"task3", b"task1", b"task2"]
    assert fields[2] == {b"s": b"task1", b"n": b"1"}
    pending = gcs.r.xpending_range(stream, TASK_GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [ids[0], ids[3]]
    again = gcs.r.xreadgroup(TASK_GROUP, "other.worker", {stream: ">"}, count=10)[0][1]
    assert [f[b"s"] for _, f in again] == [b"task1", b"task2"]


def test_queued_demand_adds_up_over_submitters_streams(gcs):
    """A shape's tasks wait on one stream per submitter tag: the autoscaler's demand and
    `rayr status` count the entries of all of them that no raylet has taken."""
    from rayr.autoscaler.autoscaler import waiting_demands
    from rayr.cli.status import collect

    streams = [gcs.keys.shape_stream("CPU=3", tag) for tag in (2, 9)]
    for stream, n in zip(streams, (2, 3), strict=True):
        gcs.ensure_group(stream)
        assert gcs.announce_stream(stream)
        for _ in range(n):
            gcs.r.xadd(stream, {b"s": b"x"})
    gcs.r.xreadgroup(TASK_GROUP, "some-node", {streams[1]: ">"}, count=1)  # taken: not waiting
    assert gcs.shape_streams() == {"CPU=3": streams}
    assert waiting_demands(gcs) == [{"CPU": 3.0}] * 4
    lengths = gcs.per_stream(streams + [gcs.keys.shape_stream("CPU=3", 4)], lambda p, s: p.xlen(s))
    assert [replies[0] for replies in lengths.values()] == [2, 3, 0]
    demand = collect(gcs)["demands"]
    assert [d["count"] for d in demand if d.get("resources") == {"CPU": 3.0}] == [5]


def test_task_events_written_after_the_retention_still_expire(gcs):
    """A task of an ended job that reports after the job's retention is over does not leave
    a table that never expires."""
    job = gcs.new_job({"driver_pid": 1, "driver_worker": "drv"}).hex()
    table = gcs.keys.task_events_exec(job)
    client = gcs.shard(gcs.keys.tag_of(table))

    def record(task: bytes) -> None:
        client.execute_command(*gcs.task_events_command(table, job, [task, b"view"], 100, 0.2))

    record(b"t1")
    assert client.pttl(table) == -1  # the job runs: its events stay
    gcs.finish_job(job, "SUCCEEDED", retention_s=0.2)
    deadline = time.monotonic() + 30
    while client.exists(table) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(table)
    record(b"t2")  # a late view, after the retention
    assert 0 < client.pttl(table) <= 200


def test_history_is_cut_to_its_size_oldest_first(gcs):
    from rayr.monitor.history import trim_history

    jobs = []
    for i in range(3):
        job = gcs.new_job({"driver_pid": i, "driver_worker": f"drv{i}"}).hex()
        gcs.r.rpush(gcs.keys.inbox(f"drv{i}"), b"a late result")  # what a dead driver left
        gcs.finish_job(job, "FAILED", retention_s=600)
        jobs.append(job)
    actors = [f"{i:032x}" for i in range(3)]
    for actor in actors:
        assert gcs.register_actor(actor, "ns", "", jobs[0], {"class_name": "A", "state": "PENDING"})[0]
        gcs.mark_actor_dead(actor, "gone")
    nodes = [f"{i:032x}" for i in range(3)]
    for node in nodes:
        gcs.register_node(NodeInfo(node, hostname="h"), ttl_s=10)
        gcs.r.sadd(gcs.keys.task_streams, gcs.keys.task_stream("~CPU=1", node, 5))
        gcs.r.xadd(gcs.keys.task_stream("~CPU=1", node, 5), {b"s": b"x"})
        gcs.set_node_state(node, NODE_DEAD, "test")
    # nothing is old enough yet
    assert trim_history(gcs, 1, 1, 1, min_age_s=3600) == 0
    assert trim_history(gcs, 1, 1, 1) == 6
    assert [gcs.r.exists(gcs.keys.job(j)) for j in jobs] == [0, 0, 1]
    assert [gcs.r.exists(gcs.keys.inbox(f"drv{i}")) for i in range(3)] == [0, 0, 1]
    assert gcs.r.smembers(gcs.keys.jobs) == {jobs[2].encode()}
    assert [gcs.r.exists(gcs.keys.actor(a)) for a in actors] == [0, 0, 1]
    assert [gcs.r.exists(gcs.keys.node(n)) for n in nodes] == [0, 0, 1]
    assert [gcs.r.exists(gcs.keys.task_stream("~CPU=1", n, 5)) for n in nodes] == [0, 0, 1]
    assert gcs.task_streams() == [gcs.keys.task_stream("~CPU=1", nodes[2], 5)]
    assert gcs.r.smembers(gcs.keys.nodes) == {nodes[2].encode()}
    assert trim_history(gcs, 1, 1, 1) == 0


def test_the_head_check_finds_a_user_without_the_spread_keys(redis_url):
    """A user given the rules of before spread tags existed may not move objects between
    nodes: the head's check says so instead of transfers failing later."""
    from rayr.gcs import preflight
    from rayr.gcs.cluster import auth_error
    from rayr.testing_redis import acl_rules

    name = f"acl-{os.urandom(4).hex()}"
    admin = connect(redis_url)
    spread_rule = "~" + Keys(name).spread_pattern
    users = {"rayr-old-" + name: [r for r in acl_rules(name) if r != spread_rule],
             "rayr-new-" + name: acl_rules(name)}
    try:
        denied = {}
        for user, rules in users.items():
            admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", *rules)
            client = connect(redis_url.replace("redis://", f"redis://{user}@"), "pw")
            try:
                denied[user] = preflight.gather(client, name).spread_denied
                with pytest.raises(redis.RedisError) as refused:  # not one of its rules
                    client.execute_command("CONFIG", "SET", "maxmemory", "0")
                assert "denied the user named in the address a command" in str(
                    auth_error(redis_url, "pw", refused.value))
            finally:
                client.close()
        assert denied == {"rayr-old-" + name: True, "rayr-new-" + name: False}
    finally:
        for user in users:
            admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def _call(n: int, actor: str) -> TaskSpec:
    return TaskSpec(
        task_id=bytes([n]) * 16, job_hex="01000000", function_key="f", function_name="A.f", args=b"",
        args_object=None, ref_args=(), dep_records={}, num_returns=1, resources={}, max_retries=0,
        retry_exceptions=False, owner="caller", attempt=0, name=f"c{n}", kind=ACTOR_CALL, actor_id=actor,
    )


def test_an_actors_mailbox_opens_before_it_and_closes_after_its_death(gcs):
    actor, rival = "ab" * 16, "cd" * 16
    row = {"class_name": "A", "state": "ALIVE"}
    assert gcs.register_actor(actor, "ns", "named", "", row) == (True, actor)
    # a second actor under a taken name: refused, and its streams go again
    assert gcs.register_actor(rival, "ns", "named", "", row) == (False, actor)
    assert not gcs.r.exists(gcs.keys.actor_mailbox(rival), gcs.keys.actor_control(rival))
    send = gcs.submit_actor_call_command
    assert gcs.r.execute_command(*send(actor, _call(1, actor).encode())) is not None
    # the process marking it dead stops between its two steps: the call sent then stays queued
    assert gcs._mark_actor_dead(args=[gcs.keys.prefix, actor, "killed", str(time.time())]) == 1
    assert gcs.r.execute_command(*send(actor, _call(2, actor).encode())) is not None
    # ... until the monitor closes the mailbox of a recently dead actor and fails what it held
    assert sweep_dead_mailboxes(gcs) == 2
    for n in (1, 2):
        (record,) = gcs.get_objects([_call(n, actor).return_ids()[0].hex()])
        assert record[0] == rec.ERROR and b"killed" in record
    assert gcs.r.execute_command(*send(actor, _call(3, actor).encode())) is None  # no mailbox now
    assert gcs.actor_death_cause(actor) == "killed"
    assert sweep_dead_mailboxes(gcs) == 0 and gcs.mark_actor_dead(actor, "again") == []
