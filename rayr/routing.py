"""Where a submitted task goes: the shared stream of its shape, or a stream for one node.

DEFAULT leaves the choice to the raylets (any node that fits pulls from the shared stream);
SPREAD sends successive tasks to successive nodes that fit; node affinity targets one node.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from rayr import resources as res
from rayr.gcs.client import GcsClient
from rayr.gcs.rows import NodeInfo
from rayr.resources import TARGET_MARK, renamed_request
from rayr.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

NODE_CACHE_S = 1.0  # how stale the node list may be when routing


def in_placement_group(request: dict[str, float], strategy: Any) -> dict[str, float]:
    """The resources a task asks for: inside a placement group, its bundle's renamed ones."""
    if isinstance(strategy, PlacementGroupSchedulingStrategy) and strategy.placement_group is not None:
        pg = strategy.placement_group
        return renamed_request(request, pg.id, strategy.placement_group_bundle_index)
    return request


class Router:
    """Picks (scheduler key, target node) per task; caches the node table briefly."""

    def __init__(self, gcs: GcsClient) -> None:
        self.gcs = gcs
        self._nodes: list[NodeInfo] = []
        self._fetched = 0.0
        self._spread = itertools.count()

    def alive_nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        if now - self._fetched > NODE_CACHE_S:
            self._nodes = self.gcs.alive_nodes()
            self._fetched = now
        return self._nodes

    def route(self, shape: str, request: dict[str, float], strategy: Any) -> tuple[str, str]:
        """(scheduler key, node id or "") for a task of ``shape`` under ``strategy``.

        Raises:
            ValueError: hard affinity to a node that is not alive or can never fit the task.
        """
        if strategy in (None, "DEFAULT") or isinstance(strategy, PlacementGroupSchedulingStrategy):
            return shape, ""  # a group's renamed resources exist only on its bundles' nodes
        nodes = self.alive_nodes()
        if strategy == "SPREAD":
            fitting = sorted(n.node_id for n in nodes if res.fits(n.resources_total, request))
            if not fitting:
                return shape, ""  # infeasible everywhere: the shared stream warns and waits
            return TARGET_MARK + shape, fitting[next(self._spread) % len(fitting)]
        if isinstance(strategy, NodeAffinitySchedulingStrategy):
            node = next((n for n in nodes if n.node_id == strategy.node_id), None)
            if strategy.soft:
                if node is not None and res.fits(node.resources_available, request):
                    return TARGET_MARK + shape, strategy.node_id
                return shape, ""
            if node is None:
                raise ValueError(
                    f"NodeAffinitySchedulingStrategy: node {strategy.node_id} is not alive; use "
                    "soft=True to run elsewhere when it is not available"
                )
            if not res.fits(node.resources_total, request):
                raise ValueError(
                    f"NodeAffinitySchedulingStrategy: node {strategy.node_id} has "
                    f"{node.resources_total}, which can never fit {request}"
                )
            return TARGET_MARK + shape, strategy.node_id
        raise ValueError(f"unknown scheduling strategy {strategy!r}")
