"""A raylet killed with SIGKILL: its work is taken up elsewhere, nothing hangs."""

from __future__ import annotations

import time

import numpy as np
import pytest

import rayr
from rayr.exceptions import ObjectLostError
from rayr.testing import Cluster
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@pytest.fixture
def cluster3(redis_url):
    c = Cluster(redis_url, node_timeout_s=1.5, heartbeat_interval_s=0.3)
    nodes = [c.add_node(num_cpus=1) for _ in range(3)]
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c, nodes
    rayr.shutdown()
    c.shutdown()


@rayr.remote(max_retries=3)
def work(i):
    time.sleep(0.05)
    return i * i


def test_tasks_of_a_killed_node_run_elsewhere(cluster3):
    cluster, nodes = cluster3
    refs = [work.remote(i) for i in range(120)]
    time.sleep(0.8)  # let every node take some
    cluster.remove_node(nodes[1], graceful=False)
    assert rayr.get(refs, timeout=60) == [i * i for i in range(120)]
    alive = {n["NodeID"] for n in rayr.nodes() if n["Alive"]}
    assert nodes[1] not in alive


def test_actor_on_a_killed_node_restarts_elsewhere(cluster3):
    cluster, nodes = cluster3

    @rayr.remote(max_restarts=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n, rayr.get_runtime_context().get_node_id()

    on_victim = NodeAffinitySchedulingStrategy(nodes[2], soft=False)
    c = Counter.options(scheduling_strategy=on_victim).remote()
    assert rayr.get(c.inc.remote()) == (1, nodes[2])
    cluster.remove_node(nodes[2], graceful=False)
    deadline = time.time() + 30
    while True:
        try:
            n, node = rayr.get(c.inc.remote(), timeout=30)
            break
        except rayr.exceptions.RayActorError:
            assert time.time() < deadline
    assert node != nodes[2] and n == 1  # a fresh instance on a live node

    @rayr.remote
    class Fragile:
        def ping(self):
            return "pong"

    f = Fragile.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)).remote()
    assert rayr.get(f.ping.remote()) == "pong"


def test_object_whose_only_copy_died_is_lost_not_hung(cluster3):
    cluster, nodes = cluster3

    @rayr.remote
    def make():
        return np.ones(1_000_000)

    ref = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[1], soft=False)).remote()
    rayr.wait([ref])
    cluster.remove_node(nodes[1], graceful=False)
    deadline = time.time() + 10
    while any(n["NodeID"] == nodes[1] and n["Alive"] for n in rayr.nodes()) and time.time() < deadline:
        time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(ObjectLostError, match="DEAD"):
        rayr.get(ref, timeout=30)
    assert time.monotonic() - start < 5


DRIVER = """
import os, sys, time
import rayr

rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2], namespace="crash")

@rayr.remote
class Holder:
    def pid(self):
        return os.getpid()

owned = Holder.options(name="owned").remote()
kept = Holder.options(name="kept", lifetime="detached").remote()
print(rayr.get(owned.pid.remote()), rayr.get(kept.pid.remote()), flush=True)
time.sleep(120)
"""


def test_a_killed_drivers_actors_are_cleaned_up(cluster3):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    cluster, _ = cluster3
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, cluster.name],
                            stdout=subprocess.PIPE, text=True)
    try:
        owned_pid, kept_pid = map(int, proc.stdout.readline().split())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    deadline = time.time() + 20
    while psutil.pid_exists(owned_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(owned_pid), "the dead driver's actor is still running"
    with pytest.raises(ValueError):
        rayr.get_actor("owned", namespace="crash")
    kept = rayr.get_actor("kept", namespace="crash")  # detached: it outlives its driver
    assert rayr.get(kept.pid.remote()) == kept_pid
    rayr.kill(kept)
