"""A stream read whose reply never arrives leaves its entries pending under the reader's
consumer: the reader takes them back once it reads again, so no task is stranded."""

from __future__ import annotations

import time

import rayr
from rayr.gcs.client import connect
from rayr.keys import TASK_GROUP, Keys, spread_tag
from rayr.testing import Cluster


@rayr.remote(num_cpus=1)
def hold(seconds):
    time.sleep(seconds)
    return "held"


@rayr.remote(num_cpus=1)
def stranded():
    return "ran"


def test_entries_a_lost_read_took_are_taken_back(redis_url):
    cluster = Cluster(redis_url)
    node = cluster.add_node(num_cpus=1)
    r = connect(redis_url)
    try:
        rayr.init(address=redis_url, _cluster_name=cluster.name)
        busy = hold.remote(3)  # the node's one CPU: its reader reads nothing meanwhile
        time.sleep(1)
        ref = stranded.remote()
        assert rayr.context.require_core().commands.flush()  # our submissions are in Redis
        stream = Keys(cluster.name).shape_stream("CPU=1", spread_tag(rayr.context.require_core().worker_hex))
        # what a read whose reply was lost leaves behind: the entry pending under the node
        got = r.xreadgroup(TASK_GROUP, node, {stream: ">"}, count=1)
        assert got and len(got[0][1]) == 1
        reader = [c for c in r.client_list() if c["name"] == f"rayr-reader-{node}"]
        assert len(reader) == 1
        r.client_kill_filter(_id=reader[0]["id"])  # its next read fails, as in a Redis restart
        assert rayr.get(busy, timeout=30) == "held"
        assert rayr.get(ref, timeout=30) == "ran"
    finally:
        rayr.shutdown()
        r.close()
        cluster.shutdown()


@rayr.remote(num_cpus=1)
def nap(seconds):
    time.sleep(seconds)
    return seconds


@rayr.remote(num_cpus=1)
def lose_my_read_ahead(stream):
    """Drop, unread, the reply of the read this worker sent ahead of this task, once Redis
    has run it (the entry it took is pending under the worker's consumer), as a connection
    lost with the reply on the wire would."""
    from rayr.context import state

    core = rayr.context.require_core()
    consumer = f"{core.node_hex}.{core.worker_hex}"
    while True:  # this task's own entry, and the one the read sent ahead took
        pending = core.gcs.r.xpending_range(stream, TASK_GROUP, "-", "+", 10, consumername=consumer)
        if len(pending) >= 2:
            break
        time.sleep(0.01)
    state.executor._ahead_client.connection.disconnect()
    return len(pending)


def test_tasks_a_read_sent_ahead_took_run_when_its_reply_is_lost(redis_url):
    """A leased worker running 1-10 ms tasks sends the read of its next task before running
    the current one; when that read's reply is lost, what it took is pending under the
    worker's consumer, and the worker runs it all the same."""
    cluster = Cluster(redis_url)
    cluster.add_node(num_cpus=1)
    try:
        rayr.init(address=redis_url, _cluster_name=cluster.name)
        stream = Keys(cluster.name).shape_stream("CPU=1", spread_tag(rayr.context.require_core().worker_hex))
        for _ in range(3):
            before = [nap.remote(0.003) for _ in range(20)]  # the lease reads ahead by now
            lose = lose_my_read_ahead.remote(stream)
            after = [nap.remote(0.003) for _ in range(5)]
            assert rayr.get(lose, timeout=30) == 2
            assert rayr.get(before + after, timeout=30) == [0.003] * 25
    finally:
        rayr.shutdown()
        cluster.shutdown()


@rayr.remote(num_cpus=1)
def noop():
    return None


@rayr.remote(num_cpus=1)
def consume(queue):
    return queue.get(timeout=20)


@rayr.remote(num_cpus=1)
def produce(queue, item):
    queue.put(item)
    return item


def test_a_task_blocked_in_get_gives_back_the_tasks_its_lease_took(redis_url):
    """A leased worker takes short tasks in batches, and reads the next task ahead of a 1-10
    ms one; when its running task blocks in get, the tasks it took and has not started go
    back to the stream: here one of them is what the blocked task waits for, on one CPU."""
    from rayr.util.queue import Queue

    cluster = Cluster(redis_url)
    cluster.add_node(num_cpus=1)
    try:
        rayr.init(address=redis_url, _cluster_name=cluster.name)
        queue = Queue()
        for i, (before, many) in enumerate([(noop, 40), (noop, 45), (nap, 10), (nap, 20)]):
            first = [before.remote() if before is noop else nap.remote(0.003) for _ in range(many)]
            got = consume.remote(queue)  # taken together with the producer behind it
            put = produce.remote(queue, i)
            assert rayr.get([got, put], timeout=60) == [i, i]
            rayr.get(first, timeout=60)
    finally:
        rayr.shutdown()
        cluster.shutdown()
