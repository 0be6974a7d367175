"""The autoscaler as the head monitor runs it: read the cluster's state from Redis, ask the
pure :func:`rayr.autoscaler.policy.decide`, act through the node provider, publish a status.

`rayr up` publishes the cluster config in ``autoscaler:config``; a monitor that finds it there
autoscales (so `rayr start --head` clusters, which have none, never do).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

from rayr.autoscaler.config import ClusterConfig, node_resources
from rayr.autoscaler.node_provider import NodeProvider, ProviderNode, provider_for
from rayr.autoscaler.policy import Decision, Limits, NodeState, NodeType, decide
from rayr.config import Settings
from rayr.gcs.client import GcsClient
from rayr.gcs.rows import NodeInfo
from rayr.keys import TASK_GROUP
from rayr.resources import parse_shape

log = logging.getLogger("rayr.autoscaler")

MAX_DEMANDS_PER_SHAPE = 1000  # enough to size any launch; bounds the packing work
LAUNCH_TIMEOUT_S = 180.0  # a node not registered by then is given up and terminated


def config_key(gcs: GcsClient) -> str:
    return gcs.keys.autoscaler_config


def status_key(gcs: GcsClient) -> str:
    return gcs.keys.prefix + "autoscaler:status"


def request_key(gcs: GcsClient) -> str:
    return gcs.keys.prefix + "autoscaler:request"


def publish_config(gcs: GcsClient, cfg: ClusterConfig, info: dict[str, Any]) -> None:
    """What `rayr up` tells the head monitor: the config and how to reach the cluster."""
    gcs.r.set(config_key(gcs), json.dumps({"config": cfg.model_dump(mode="json"), **info}))


def waiting_demands(gcs: GcsClient) -> list[dict[str, float]]:
    """One resource request per task / actor creation no node has taken, and per bundle of a
    pending placement group."""
    demands: list[dict[str, float]] = []
    shape_streams = gcs.shape_streams()
    replies = gcs.per_stream([s for streams in shape_streams.values() for s in streams],
                             lambda p, s: (p.xlen(s), p.xinfo_groups(s)))
    for shape, streams in sorted(shape_streams.items()):
        waiting = 0
        for stream in streams:  # one per submitter tag
            length, groups = replies[stream]
            if isinstance(length, Exception) or not length:
                continue
            taken = 0
            if not isinstance(groups, Exception):
                for group in groups:
                    name = group.get("name")
                    if name in (TASK_GROUP, TASK_GROUP.encode()):
                        taken = int(group.get("pending", 0))
            waiting += max(0, int(length) - taken)
        demands += [parse_shape(shape) for _ in range(min(waiting, MAX_DEMANDS_PER_SHAPE))]
    for info in gcs.placement_groups():
        if info.get("state") == "PENDING":
            demands += [dict(b) for b in json.loads(info["bundles"])]
    return demands


def busy_nodes(gcs: GcsClient) -> set[str]:
    """Nodes hosting a live actor."""
    out: set[str] = set()
    pattern = gcs.keys.actor_key_prefix + "*"
    keys = [k for k in gcs.r.scan_iter(match=pattern, count=500, _type="hash")]
    if not keys:
        return out
    with gcs.r.pipeline(transaction=False) as p:
        for key in keys:
            p.hmget(key, "state", "node")
        for state, node in p.execute():
            if state in (b"ALIVE", b"PENDING", b"RESTARTING") and node:
                out.add(node.decode())
    return out


def autoscaler_status(gcs: GcsClient) -> dict[str, Any] | None:
    """What the autoscaler last published (``rayr status`` shows it), or None without one."""
    raw = gcs.r.hgetall(status_key(gcs))
    if not raw or not gcs.r.exists(config_key(gcs)):
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}
    out: dict[str, Any] = {"time": float(data.get("time", 0))}
    for name in ("pending", "workers", "infeasible", "recent"):
        out[name] = json.loads(data.get(name, "[]"))
    return out


def render_autoscaler(status: dict[str, Any]) -> list[str]:
    """The autoscaler's part of ``rayr status``."""
    counts: dict[str, int] = {}
    for worker in status["workers"]:
        counts[worker["type"]] = counts.get(worker["type"], 0) + 1
    lines = ["", "Autoscaler:"]
    lines.append(" workers: " + (", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "none"))
    if status["pending"]:
        lines.append(f" launching: {len(status['pending'])} node(s)")
    for request in status["infeasible"][:5]:
        lines.append(f" no node type fits {request}")
    lines += [f" {line}" for line in status["recent"][-5:]]
    return lines


class Autoscaler:
    """One cluster's autoscaler; :meth:`update` is one round."""

    def __init__(self, gcs: GcsClient, settings: Settings, cfg: ClusterConfig,
                 provider: NodeProvider) -> None:
        self.gcs = gcs
        self.settings = settings
        self.cfg = cfg
        self.provider = provider
        self.types = {
            name: NodeType(name, node_resources(cfg.available_node_types[name]),
                           cfg.available_node_types[name].min_workers, cfg.type_max(name))
            for name in cfg.worker_types()
        }
        self.limits = Limits(cfg.max_workers, cfg.upscaling_speed, cfg.idle_timeout_minutes * 60)
        self._idle_since: dict[str, float] = {}
        self.recent: deque[str] = deque(maxlen=10)

    def update(self) -> Decision:
        now = time.time()
        rayr_nodes = {n.node_id: n for n in self.gcs.list_nodes()}
        actors = busy_nodes(self.gcs)
        decision_nodes: list[NodeState] = []
        failed: list[tuple[str, str]] = []
        by_rayr_id: dict[str, ProviderNode] = {}
        for node in self.provider.non_terminated_nodes():
            info = rayr_nodes.get(node.rayr_node_id)
            if node.failed:
                failed.append((node.provider_id, node.failed))
            elif info is not None and not info.alive:
                failed.append((node.provider_id, f"node died: {info.death_reason or 'unknown'}"))
            elif info is None and now - node.launch_time > LAUNCH_TIMEOUT_S:
                failed.append((node.provider_id, f"not registered within {LAUNCH_TIMEOUT_S:g}s"))
            elif info is None:
                decision_nodes.append(NodeState(node.provider_id, node.node_type, pending=True))
            else:
                by_rayr_id[node.rayr_node_id] = node
                decision_nodes.append(self._state(node.provider_id, node.node_type, info, actors, now))
        for info in rayr_nodes.values():
            if info.is_head and info.alive:
                decision_nodes.append(self._state(info.node_id, self.cfg.head_node_type, info,
                                                  actors, now, head=True))
        raw = self.gcs.r.get(request_key(self.gcs))
        requested = json.loads(raw)["bundles"] if raw else []
        decision = decide(self.types, self.limits, decision_nodes, waiting_demands(self.gcs), requested, now)
        for provider_id, why in failed:
            self._act(f"terminating failed node {provider_id[:12]}: {why}")
            self.provider.terminate_node(provider_id)
        for provider_id, why in decision.terminate:
            self._act(f"terminating node {provider_id[:12]}: {why}")
            self.provider.terminate_node(provider_id)
            self._idle_since.pop(provider_id, None)
        for node_type, count in decision.launch.items():
            created = self.provider.create_node(node_type, count)
            self._act(f"launching {len(created)} node(s) of type {node_type}")
        self._publish(decision, now)
        return decision

    def _state(self, node_id: str, node_type: str, info: NodeInfo, actors: set[str], now: float,
               head: bool = False) -> NodeState:
        total, available = info.resources_total, info.resources_available
        idle = all(abs(float(available.get(k, 0)) - float(v)) < 1e-6 for k, v in total.items())
        usage = info.store_usage
        holds = bool(usage.get("num_objects") or usage.get("spilled_objects"))
        in_use = holds or node_id in actors
        if idle and not in_use:
            since = self._idle_since.setdefault(node_id, now)
        else:
            self._idle_since.pop(node_id, None)
            since = None
        return NodeState(node_id, node_type, is_head=head, total=total, available=available,
                         idle_since=since, in_use=in_use)

    def _act(self, what: str) -> None:
        log.info("%s", what)
        self.recent.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _publish(self, decision: Decision, now: float) -> None:
        nodes = self.provider.non_terminated_nodes()
        registered = {n.node_id for n in self.gcs.alive_nodes()}
        pending = [{"id": n.provider_id, "type": n.node_type}
                   for n in nodes if n.rayr_node_id not in registered and not n.failed]
        self.gcs.r.hset(status_key(self.gcs), mapping={
            "time": str(now),
            "pending": json.dumps(pending),
            "workers": json.dumps([{"id": n.rayr_node_id or n.provider_id, "type": n.node_type}
                                   for n in nodes if n.rayr_node_id in registered]),
            "infeasible": json.dumps(decision.infeasible[:20]),
            "recent": json.dumps(list(self.recent)),
        })


class AutoscalerHook:
    """What the monitor calls each loop: runs the autoscaler when `rayr up` configured one."""

    CHECK_S = 1.0  # how often a monitor without an autoscaler looks for a config

    def __init__(self, gcs: GcsClient, settings: Settings) -> None:
        self.gcs = gcs
        self.settings = settings
        self.autoscaler: Autoscaler | None = None
        self._raw: bytes | None = None
        self._next = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.CHECK_S
        try:
            raw = self.gcs.r.get(config_key(self.gcs))
            if raw is None:
                self.autoscaler = self._raw = None
                return
            if raw != self._raw:
                data = json.loads(raw)
                cfg = ClusterConfig.model_validate(data["config"])
                provider = provider_for(cfg, self.settings, data)
                self.autoscaler, self._raw = Autoscaler(self.gcs, self.settings, cfg, provider), raw
            assert self.autoscaler is not None
            self._next = now + self.autoscaler.cfg.autoscaler_interval_s
            self.autoscaler.update()
        except Exception:  # the monitor's other duties must go on whatever happens here
            log.exception("autoscaler round failed")
