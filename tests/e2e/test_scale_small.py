"""Issue 18's correctness checks at a small scale (the figures come from
scripts/bench_scale.py): 10,000 tasks queued until a node that fits joins, with 50 simulated
raylets heartbeating alongside, all answered, no node wrongly declared dead."""

from __future__ import annotations

import pytest

import rayr
from rayr.testing import Cluster, SimulatedNodes

QUEUED = 10_000


@rayr.remote(num_cpus=0, resources={"later": 0.001})
def square(x):
    return x * x


@pytest.fixture
def small_scale(redis_url):
    c = Cluster(redis_url)
    c.add_node(num_cpus=2)
    rayr.init(address=redis_url, _cluster_name=c.name)
    settings = c.settings
    sims = SimulatedNodes(redis_url, settings.redis_password, c.name, 50, settings.heartbeat_interval_s,
                          settings.node_timeout_s)
    try:
        sims.start()
        yield c, sims
    finally:
        sims.close()
        rayr.shutdown()
        c.shutdown()


def _alive() -> set[str]:
    return {n["NodeID"] for n in rayr.nodes() if n["Alive"]}


def test_ten_thousand_queued_tasks_beside_fifty_simulated_raylets(small_scale):
    cluster, sims = small_scale
    assert set(sims.ids) <= _alive()
    with pytest.warns(RuntimeWarning, match="stays queued"):
        refs = [square.remote(i) for i in range(QUEUED)]
    cluster.add_node(num_cpus=2, resources={"later": 1000.0})
    assert rayr.get(refs, timeout=600) == [i * i for i in range(QUEUED)]
    assert set(sims.ids) <= _alive()  # heartbeating all along: none was taken for dead
