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
        rayr.get(rayr.put(0))  # our submissions are written
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
