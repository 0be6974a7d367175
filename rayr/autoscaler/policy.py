"""The autoscaler's decisions, as a pure function of the cluster's state (no I/O, no clock).

:func:`decide` is given the node types and limits, the nodes (with type, whether they are
still starting, since when they are idle, whether they hold objects or actors), the resource
shapes waiting for a node and the ``request_resources`` bundles, and returns how many nodes of
each type to launch and which nodes to terminate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from rayr.resources import fits, subtract

# a cluster may always have this many launches in flight, whatever upscaling_speed says
# (so a cluster of only a head node can grow at all)
MIN_CONCURRENT_LAUNCHES = 5


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: Mapping[str, float]
    min_workers: int = 0
    max_workers: int = 0


@dataclass(frozen=True)
class NodeState:
    """A node the provider runs (or is starting)."""

    node_id: str
    node_type: str
    pending: bool = False  # launched, not registered yet
    is_head: bool = False
    total: Mapping[str, float] = field(default_factory=dict)  # empty: its type's resources
    available: Mapping[str, float] = field(default_factory=dict)  # free now (running nodes)
    idle_since: float | None = None  # None: in use now
    in_use: bool = False  # holds objects or actors still in use: never terminated


@dataclass(frozen=True)
class Limits:
    max_workers: int
    upscaling_speed: float = 1.0
    idle_timeout_s: float = 300.0


@dataclass
class Decision:
    launch: dict[str, int] = field(default_factory=dict)
    terminate: list[tuple[str, str]] = field(default_factory=list)  # (node id, why)
    infeasible: list[dict[str, float]] = field(default_factory=list)  # no node type fits these

    def __bool__(self) -> bool:
        return bool(self.launch or self.terminate)


def _pick_type(
    request: Mapping[str, float],
    types: Mapping[str, NodeType],
    room: Mapping[str, int],
) -> str | None:
    """The node type to launch for ``request``: one that fits it and has room; among those the
    one with the fewest resources the request does not ask for, then the smallest."""
    best: tuple[tuple[int, float, str], str] | None = None
    for name, node_type in types.items():
        if room.get(name, 0) <= 0 or not fits(node_type.resources, request):
            continue
        unasked = sum(1 for r in node_type.resources if r not in request and r not in ("CPU", "memory",
                                                                                         "object_store_memory"))
        score = (unasked, sum(v for k, v in node_type.resources.items() if k == "CPU"), name)
        if best is None or score < best[0]:
            best = (score, name)
    return None if best is None else best[1]


def _pack(
    requests: list[dict[str, float]],
    bins: list[dict[str, float]],
    types: Mapping[str, NodeType],
    room: dict[str, int],
    budget: int,
) -> tuple[dict[str, int], list[dict[str, float]]]:
    """First-fit ``requests`` (largest first) into ``bins``, opening new nodes of the best type
    for what does not fit, at most ``budget`` of them; returns (launches, requests no type fits)."""
    launch: dict[str, int] = {}
    infeasible: list[dict[str, float]] = []
    ordered = sorted(requests, key=lambda r: (-sum(r.values()), sorted(r.items())))
    for request in ordered:
        target = next((b for b in bins if fits(b, request)), None)
        if target is None:
            name = _pick_type(request, types, room)
            if name is None:
                if not any(fits(t.resources, request) for t in types.values()):
                    infeasible.append(request)
                continue
            if budget <= 0:
                continue
            budget -= 1
            room[name] -= 1
            launch[name] = launch.get(name, 0) + 1
            target = dict(types[name].resources)
            bins.append(target)
        subtract(target, request)
    return launch, infeasible


def decide(
    types: Mapping[str, NodeType],
    limits: Limits,
    nodes: list[NodeState],
    demands: list[dict[str, float]],
    requested: list[dict[str, float]],
    now: float,
) -> Decision:
    """Which node types to launch how many of, and which nodes to terminate.

    ``types`` are the worker types (the head is never launched or terminated). ``demands``
    holds one entry per waiting task / actor / bundle that no running node can take now;
    ``requested`` the bundles of the latest ``request_resources`` call, which the cluster's
    total resources must hold (launched at once, not limited by upscaling_speed).
    """
    decision = Decision()
    workers = [n for n in nodes if not n.is_head]
    count: dict[str, int] = {}
    for node in workers:
        count[node.node_type] = count.get(node.node_type, 0) + 1

    # 1. nodes of unknown types or over their type's max go first (the config shrank)
    keep: list[NodeState] = []
    for node in sorted(workers, key=lambda n: (n.in_use, n.idle_since is None)):
        node_type = types.get(node.node_type)
        if node_type is None:
            decision.terminate.append((node.node_id, f"node type {node.node_type!r} is not in the config"))
        elif count[node.node_type] > node_type.max_workers and not node.in_use:
            count[node.node_type] -= 1
            decision.terminate.append((node.node_id, f"more than max_workers={node_type.max_workers} "
                                                     f"of type {node.node_type}"))
        else:
            keep.append(node)
    total_workers = len(keep)

    # 2. idle nodes past the timeout, never below min_workers, never one request_resources needs
    heads = [n for n in nodes if n.is_head]
    idle = [n for n in keep if not n.pending and not n.in_use and n.idle_since is not None
            and now - n.idle_since >= limits.idle_timeout_s]
    for node in sorted(idle, key=lambda n: n.idle_since or 0.0):
        if count[node.node_type] <= types[node.node_type].min_workers:
            continue
        rest = [n for n in heads + keep if n is not node]
        if requested and not _holds(requested, rest, types):
            continue
        keep.remove(node)
        count[node.node_type] -= 1
        total_workers -= 1
        decision.terminate.append((node.node_id, f"idle for more than {limits.idle_timeout_s:g}s"))

    # 3. min_workers
    room = {name: max(0, t.max_workers - count.get(name, 0)) for name, t in types.items()}
    global_room = max(0, limits.max_workers - total_workers)
    for name, node_type in types.items():
        missing = min(max(0, node_type.min_workers - count.get(name, 0)), room[name], global_room)
        if missing:
            decision.launch[name] = missing
            room[name] -= missing
            global_room -= missing
    fresh = [dict(types[name].resources) for name, n in decision.launch.items() for _ in range(n)]

    # 4. request_resources: the cluster's totals must hold the bundles
    if requested:
        totals = [dict(_total(n, types)) for n in heads + keep] + [dict(b) for b in fresh]
        extra, _ = _pack([dict(b) for b in requested], totals, types, room, global_room)
        _merge(decision.launch, extra)
        global_room -= sum(extra.values())
        fresh += [dict(types[name].resources) for name, n in extra.items() for _ in range(n)]

    # 5. waiting work: free room on running nodes, then starting ones, then new nodes,
    # with at most max(MIN_CONCURRENT_LAUNCHES, upscaling_speed * nodes) launches in flight
    bins = [dict(n.available) for n in heads + keep if not n.pending]
    bins += [dict(_total(n, types)) for n in keep if n.pending] + fresh
    in_flight = sum(1 for n in keep if n.pending) + sum(decision.launch.values())
    running = len(heads) + sum(1 for n in keep if not n.pending)
    allowed = max(MIN_CONCURRENT_LAUNCHES, math.ceil(limits.upscaling_speed * running))
    budget = min(global_room, max(0, allowed - in_flight))
    extra, decision.infeasible = _pack([dict(d) for d in demands], bins, types, room, budget)
    _merge(decision.launch, extra)
    return decision


def _total(node: NodeState, types: Mapping[str, NodeType]) -> Mapping[str, float]:
    if node.total:
        return node.total
    node_type = types.get(node.node_type)
    return node_type.resources if node_type is not None else {}


def _holds(bundles: list[dict[str, float]], nodes: list[NodeState], types: Mapping[str, NodeType]) -> bool:
    bins = [dict(_total(n, types)) for n in nodes]
    for bundle in sorted(bundles, key=lambda r: -sum(r.values())):
        target = next((b for b in bins if fits(b, bundle)), None)
        if target is None:
            return False
        subtract(target, bundle)
    return True


def _merge(into: dict[str, int], extra: Mapping[str, int]) -> None:
    for name, n in extra.items():
        into[name] = into.get(name, 0) + n
