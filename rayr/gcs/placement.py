"""Placing placement-group bundles on nodes: a pure function, no I/O.

Strategies, as in Ray: PACK (as few nodes as possible), SPREAD (as many as possible),
STRICT_PACK (all on one node), STRICT_SPREAD (each bundle on its own node).
"""

from __future__ import annotations

from collections.abc import Mapping

from rayr import resources as res

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
READY_INDEX = (0xFFFFFFFE).to_bytes(4, "big")


def ready_object_id(pg_hex: str) -> bytes:
    """The object the monitor stores once a placement group is placed."""
    return bytes.fromhex(pg_hex) + READY_INDEX


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        res.add(total, bundle)
    return total


def place_bundles(
    bundles: list[dict[str, float]], strategy: str, nodes: Mapping[str, Mapping[str, float]]
) -> list[str] | None:
    """The node id for each bundle, or None when the nodes' free resources cannot take them.

    ``nodes`` maps node id to the resources free on it. Ties go to the node with more free
    CPU, then to the smaller id, so the result is deterministic.
    """
    free = {node: dict(avail) for node, avail in nodes.items()}
    order = sorted(free, key=lambda n: (-free[n].get("CPU", 0.0), n))
    if strategy in ("STRICT_PACK", "PACK"):
        need = _sum(bundles)
        for node in order:
            if res.fits(free[node], need):
                return [node] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
        return _greedy(bundles, free, order, prefer_used=True)
    if strategy == "STRICT_SPREAD":
        if len(bundles) > len(free):
            return None
        return _greedy(bundles, free, order, prefer_used=False, distinct=True)
    if strategy == "SPREAD":
        return _greedy(bundles, free, order, prefer_used=False)
    raise ValueError(f"placement strategy must be one of {STRATEGIES}, got {strategy!r}")


def _greedy(
    bundles: list[dict[str, float]],
    free: dict[str, dict[str, float]],
    order: list[str],
    prefer_used: bool,
    distinct: bool = False,
) -> list[str] | None:
    placed: list[str] = [""] * len(bundles)
    count = dict.fromkeys(order, 0)
    # biggest bundles first: they are the hardest to fit
    for index in sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values())):
        bundle = bundles[index]
        candidates = [n for n in order if res.fits(free[n], bundle) and not (distinct and count[n])]
        if not candidates:
            return None
        if prefer_used:
            node = max(candidates, key=lambda n: (count[n], -order.index(n)))
        else:
            node = min(candidates, key=lambda n: (count[n], order.index(n)))
        res.subtract(free[node], bundle)
        count[node] += 1
        placed[index] = node
    return placed
