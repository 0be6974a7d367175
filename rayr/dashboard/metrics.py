"""The head's Prometheus metrics: cluster gauges read from the GCS on each scrape, and the
``rayr.util.metrics`` series every process reported, merged.

Cluster metrics are named ``rayr_*``; application metrics keep Ray's ``ray_`` prefix (see
rayr/util/metrics.py), so queries written for Ray's custom metrics work unchanged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from rayr.dashboard import data
from rayr.dashboard.data import TaskRow
from rayr.gcs.client import GcsClient
from rayr.gcs.task_events import STATES
from rayr.util.metrics import COUNTER, GAUGE, HISTOGRAM

log = logging.getLogger("rayr.dashboard")
ACTOR_STATES = ("PENDING", "ALIVE", "RESTARTING", "DEAD")


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class ClusterCollector(Collector):
    """Reads the cluster's state when Prometheus scrapes (nothing is kept between scrapes but
    the dashboard's short-lived task cache)."""

    def __init__(self, gcs: GcsClient, tasks: Callable[[], list[TaskRow]]) -> None:
        self.gcs = gcs
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._work()
        yield from self._redis()
        yield from user_metrics(self.gcs)

    def _nodes(self) -> Iterator[Metric]:
        rows = data.nodes(self.gcs)
        count = _gauge("rayr_nodes", "Nodes by state (dead ones as long as history keeps them).", ["state"])
        states = Counter(r["state"] for r in rows)
        for state in ("ALIVE", "DEAD"):
            count.add_metric([state], states.get(state, 0))
        yield count
        total = _gauge("rayr_node_resources_total", "A live node's resources.", ["node_id", "resource"])
        used = _gauge("rayr_node_resources_used", "What tasks and actors hold of a live node's resources.",
                      ["node_id", "resource"])
        store = {name: _gauge(f"rayr_object_store_{name}", doc, ["node_id"]) for name, doc in (
            ("used_bytes", "Bytes in a node's object store."),
            ("capacity_bytes", "A node's object store capacity (0: unlimited)."),
            ("objects", "Objects in a node's object store."),
            ("spilled_bytes", "Bytes a node's object store spilled to disk."),
        )}
        host = {name: _gauge(f"rayr_node_{name}", doc, ["node_id"]) for name, doc in (
            ("cpu_percent", "CPU use of a node's host, percent."),
            ("mem_used_bytes", "Memory in use on a node's host."),
            ("mem_total_bytes", "Memory of a node's host."),
        )}
        for r in rows:
            if r["state"] != "ALIVE":
                continue
            node = r["node_id"]
            for resource, amount in r["resources_total"].items():
                if not resource.startswith("node:"):
                    total.add_metric([node, resource], float(amount))
                    used.add_metric([node, resource], float(r["resources_used"].get(resource, 0.0)))
            usage = r["store"]
            store["used_bytes"].add_metric([node], usage.get("used_bytes", 0))
            store["capacity_bytes"].add_metric([node], usage.get("capacity") or 0)
            store["objects"].add_metric([node], usage.get("num_objects", 0))
            store["spilled_bytes"].add_metric([node], usage.get("spilled_bytes", 0))
            hu = r["host_usage"]
            if hu:
                host["cpu_percent"].add_metric([node], hu.get("cpu_percent", 0.0))
                host["mem_used_bytes"].add_metric([node], hu.get("mem_used", 0))
                host["mem_total_bytes"].add_metric([node], hu.get("mem_total", 0))
        yield total
        yield used
        yield from store.values()
        yield from host.values()

    def _work(self) -> Iterator[Metric]:
        tasks = _gauge("rayr_tasks", "Tasks and actor calls by state (from the task events).", ["state"])
        counts = Counter(t.state for t in self.tasks())
        for state in STATES:
            tasks.add_metric([state], counts.get(state, 0))
        yield tasks
        actors = _gauge("rayr_actors", "Actors by state.", ["state"])
        by_state = Counter(a["state"] for a in data.actors(self.gcs))
        for state in ACTOR_STATES:
            actors.add_metric([state], by_state.get(state, 0))
        yield actors
        jobs = _gauge("rayr_jobs", "Jobs by status.", ["status"])
        for status, n in sorted(Counter(j["status"] for j in data.jobs(self.gcs)).items()):
            jobs.add_metric([status], n)
        yield jobs
        pgs = _gauge("rayr_placement_groups", "Placement groups by state.", ["state"])
        for state, n in sorted(Counter(p["state"] for p in data.placement_groups(self.gcs)).items()):
            pgs.add_metric([state], n)
        yield pgs

    def _redis(self) -> Iterator[Metric]:
        info = data.redis_info(self.gcs)
        yield GaugeMetricFamily("rayr_redis_used_memory_bytes", "Memory the GCS's Redis uses.",
                                value=info["used_memory"])
        yield GaugeMetricFamily("rayr_redis_ops_per_second", "Commands per second the GCS's Redis runs now.",
                                value=info["ops_per_sec"])
        yield GaugeMetricFamily("rayr_redis_connected_clients", "Connections to the GCS's Redis.",
                                value=info["connected_clients"])
        yield CounterMetricFamily("rayr_redis_commands_processed", "Commands the GCS's Redis has run.",
                                  value=info["commands_processed"])


def read_series(gcs: GcsClient) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every reported series: (name, tags, {kind, description, boundaries, value}); processes
    whose hash expired leave the index here."""
    processes = sorted(raw.decode() for raw in gcs.r.smembers(gcs.keys.metrics_index))
    if not processes:
        return []
    with gcs.r.pipeline(transaction=False) as p:
        for process in processes:
            p.hgetall(gcs.keys.metrics(process))
        hashes = p.execute()
    gone = [proc for proc, h in zip(processes, hashes, strict=True) if not h]
    if gone:
        gcs.r.srem(gcs.keys.metrics_index, *gone)
    out = []
    for h in hashes:
        for raw_key, raw_value in h.items():
            try:
                name, tags = json.loads(raw_key)
                out.append((name, tags, json.loads(raw_value)))
            except (ValueError, TypeError):
                log.warning("skipping a malformed metric series %r", raw_key[:100])
    return out


def merge_series(series: list[tuple[str, dict[str, str], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per metric name: its kind, description, boundaries and the merged value per tag set
    (counters and histograms summed over processes, a gauge's latest value)."""
    merged: dict[str, dict[str, Any]] = {}
    for name, tags, entry in series:
        metric = merged.setdefault(name, {"kind": entry.get("k"), "description": entry.get("d") or "",
                                          "boundaries": entry.get("b"), "values": {}})
        if entry.get("k") != metric["kind"]:
            continue  # two processes disagree on what the name is; the first seen wins
        key = tuple(sorted(tags.items()))
        value: Any = entry.get("v")
        have = metric["values"].get(key)
        if metric["kind"] == COUNTER:
            metric["values"][key] = (have or 0.0) + float(value)
        elif metric["kind"] == GAUGE:
            if have is None or value[1] >= have[1]:
                metric["values"][key] = value
        elif metric["kind"] == HISTOGRAM:
            counts, total, n = value
            if have is not None and len(have[0]) == len(counts):
                counts = [a + b for a, b in zip(have[0], counts, strict=True)]
                total, n = have[1] + total, have[2] + n
            metric["values"][key] = (counts, total, n)
    return merged


def user_metrics(gcs: GcsClient) -> Iterator[Metric]:
    """The application metrics as Prometheus families."""
    for name, metric in sorted(merge_series(read_series(gcs)).items()):
        label_names = sorted({k for key in metric["values"] for k, _ in key})
        full = "ray_" + name
        family: Any
        if metric["kind"] == COUNTER:
            family = CounterMetricFamily(full, metric["description"], labels=label_names)
        elif metric["kind"] == GAUGE:
            family = GaugeMetricFamily(full, metric["description"], labels=label_names)
        elif metric["kind"] == HISTOGRAM:
            family = HistogramMetricFamily(full, metric["description"], labels=label_names)
        else:
            continue
        for key, value in metric["values"].items():
            tags = dict(key)
            labels = [tags.get(k, "") for k in label_names]
            if metric["kind"] == COUNTER:
                family.add_metric(labels, value)
            elif metric["kind"] == GAUGE:
                family.add_metric(labels, value[0])
            else:
                counts, total, _ = value
                bounds = [*(repr(float(b)) for b in metric["boundaries"]), "+Inf"]
                cumulative, buckets = 0, []
                for bound, n in zip(bounds, counts, strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                family.add_metric(labels, buckets, total)
        yield family
