"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import rayr
from rayr.testing import Cluster


def three_nodes(redis_url: str, **settings: Any) -> Iterator[tuple[Cluster, list[str]]]:
    """Three one-CPU nodes that detect a dead node within 1.5 s, with a driver connected."""
    c = Cluster(redis_url, node_timeout_s=1.5, heartbeat_interval_s=0.3, **settings)
    nodes = [c.add_node(num_cpus=1) for _ in range(3)]
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c, nodes
    rayr.shutdown()
    c.shutdown()


@pytest.fixture
def cluster3(redis_url: str) -> Iterator[tuple[Cluster, list[str]]]:
    yield from three_nodes(redis_url)


@pytest.fixture
def cluster3_long_leases(redis_url: str) -> Iterator[tuple[Cluster, list[str]]]:
    """Three nodes whose leased workers keep their lease past the node timeout."""
    yield from three_nodes(redis_url, worker_lease_max_s=60)
