"""Several raylets sharing only Redis: placement across nodes and objects moving between them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rayr
from rayr.testing import Cluster
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@pytest.fixture(scope="module")
def three_nodes(redis_url):
    c = Cluster(redis_url)
    nodes = [
        c.add_node(num_cpus=1),
        c.add_node(num_cpus=1),
        c.add_node(num_cpus=1, resources={"gpu_like": 1}),
    ]
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c, nodes
    rayr.shutdown()
    c.shutdown()


@rayr.remote
def where(delay=0.0):
    time.sleep(delay)
    return rayr.get_runtime_context().get_node_id()


def test_cluster_view_covers_every_node(three_nodes):
    _, nodes = three_nodes
    assert {n["NodeID"] for n in rayr.nodes() if n["Alive"]} == set(nodes)
    assert rayr.cluster_resources()["CPU"] == 3.0


def test_spread_reaches_every_node(three_nodes):
    _, nodes = three_nodes
    seen = rayr.get([where.options(scheduling_strategy="SPREAD").remote(0.05) for _ in range(9)])
    assert set(seen) == set(nodes)


def test_default_uses_every_node_under_load(three_nodes):
    _, nodes = three_nodes
    # long enough that a node whose first worker is slow to start (a loaded machine) still
    # takes its share before the others drain the queue
    seen = rayr.get([where.remote(0.4) for _ in range(12)])
    assert set(seen) == set(nodes), {n[:8]: seen.count(n) for n in nodes}


def test_resources_decide_the_node(three_nodes):
    _, nodes = three_nodes
    picked = rayr.get([where.options(resources={"gpu_like": 1}).remote() for _ in range(3)])
    assert set(picked) == {nodes[2]}


def test_node_affinity_hard_and_soft(three_nodes):
    _, nodes = three_nodes
    hard = NodeAffinitySchedulingStrategy(nodes[1], soft=False)
    assert set(rayr.get([where.options(scheduling_strategy=hard).remote() for _ in range(4)])) == {nodes[1]}
    with pytest.raises(ValueError, match="not alive"):
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, soft=False)).remote()
    soft_missing = NodeAffinitySchedulingStrategy("ab" * 16, soft=True)
    assert rayr.get(where.options(scheduling_strategy=soft_missing).remote()) in nodes


def test_actor_placed_by_affinity(three_nodes):
    _, nodes = three_nodes

    @rayr.remote
    class Where:
        def node(self):
            return rayr.get_runtime_context().get_node_id()

    a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[2], soft=False)).remote()
    assert rayr.get(a.node.remote()) == nodes[2]


def test_large_objects_move_between_nodes_byte_for_byte(three_nodes):
    _, nodes = three_nodes
    data = np.random.default_rng(7).integers(0, 255, size=20_000_000, dtype=np.uint8)
    ref = rayr.put(data)

    @rayr.remote
    def digest(arr):
        import hashlib

        return hashlib.sha256(arr.tobytes()).hexdigest(), rayr.get_runtime_context().get_node_id()

    import hashlib

    expected = hashlib.sha256(data.tobytes()).hexdigest()
    for node in nodes[1:]:
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        # two readers on the same node: one pull, both get the bytes
        results = rayr.get([digest.options(scheduling_strategy=strategy).remote(ref) for _ in range(2)])
        assert results == [(expected, node)] * 2

    @rayr.remote
    def make(seed):
        return np.random.default_rng(seed).integers(0, 255, size=5_000_000, dtype=np.uint8)

    far = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[2], soft=False)).remote(3)
    expected_far = np.random.default_rng(3).integers(0, 255, size=5_000_000, dtype=np.uint8)
    assert np.array_equal(rayr.get(far), expected_far)


REMOTE_DRIVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import rayr

    rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2])
    assert rayr.get_runtime_context().get_node_id().startswith("driver-")

    @rayr.remote
    def double(a):
        return a * 2

    big = np.arange(1_000_000, dtype=np.int64)
    out = rayr.get(double.remote(rayr.put(big)))
    assert np.array_equal(out, big * 2)
    rayr.shutdown()
    print("remote-driver-ok")
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to fake another host")
def test_driver_on_a_host_without_a_node(three_nodes, tmp_path):
    cluster, _ = three_nodes
    script = tmp_path / "driver.py"
    script.write_text(REMOTE_DRIVER)
    # a UTS namespace gives the driver another host name: no node of the cluster is "local"
    cmd = f"hostname rayr-elsewhere && exec {sys.executable} {script} {cluster.address} {cluster.name}"
    out = subprocess.run(["unshare", "--uts", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "remote-driver-ok" in out.stdout


def test_tasks_move_to_their_large_arguments(three_nodes):
    _, nodes = three_nodes

    @rayr.remote
    def make():
        return np.zeros(2_000_000, dtype=np.uint8)  # 2 MB: stored where it was made

    @rayr.remote
    def consume(arr):
        return rayr.get_runtime_context().get_node_id()

    far = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[2], soft=False)).remote()
    rayr.wait([far])
    # locality applies when the node has room: let its heartbeat show it idle again
    time.sleep(2.2)
    ran_on = rayr.get([consume.remote(far) for _ in range(3)])
    assert ran_on.count(nodes[2]) >= 2, f"tasks should follow their 2 MB argument to its node: {ran_on}"
