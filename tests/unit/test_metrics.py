"""rayr.util.metrics' API checks and the head's merge of what processes report (no Redis)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rayr import context
from rayr.dashboard import metrics as head_metrics
from rayr.node import dashboard_socket, http_url, is_loopback
from rayr.util.metrics import COUNTER, GAUGE, HISTOGRAM, Counter, Gauge, Histogram


def _value(name: str, tags: dict[str, str]):
    assert context.state.metrics is not None
    return context.state.metrics.value(name, tuple(sorted(tags.items())))


def test_counter_gauge_histogram_record_per_tag_set():
    c = Counter("unit_requests", "requests", tag_keys=("route",))
    c.inc(tags={"route": "/a"})
    c.inc(2.5, tags={"route": "/a"})
    c.set_default_tags({"route": "/b"}).inc()
    assert _value("unit_requests", {"route": "/a"}) == 3.5
    assert _value("unit_requests", {"route": "/b"}) == 1.0
    g = Gauge("unit_depth", tag_keys=("q",))
    g.set(4, tags={"q": "x"})
    g.set(2, tags={"q": "x"})
    assert _value("unit_depth", {"q": "x"})[0] == 2.0
    h = Histogram("unit_latency", boundaries=[10, 1], tag_keys=())
    for v in (0.5, 5, 50, 1):
        h.observe(v)
    counts, total, n = _value("unit_latency", {})
    assert h.boundaries == [1.0, 10.0] and counts == [2, 1, 1] and total == 56.5 and n == 4
    assert c.info["default_tags"] == {"route": "/b"} and c.info["tag_keys"] == ("route",)


def test_bad_uses_are_refused_with_what_would_be_right():
    with pytest.raises(ValueError, match="Empty name"):
        Counter("")
    with pytest.raises(TypeError, match="tuple"):
        Counter("unit_bad", tag_keys=["route"])  # type: ignore[arg-type]
    c = Counter("unit_bad2", tag_keys=("route",))
    with pytest.raises(ValueError, match="> 0"):
        c.inc(0, tags={"route": "x"})
    with pytest.raises(ValueError, match="Missing value for tag key"):
        c.inc()
    with pytest.raises(ValueError, match="Unrecognized tag key 'other'"):
        c.inc(tags={"route": "x", "other": "y"})
    with pytest.raises(TypeError, match="must be str"):
        c.inc(tags={"route": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="boundaries"):
        Histogram("unit_h")
    with pytest.raises(ValueError, match="index 1"):
        Histogram("unit_h", boundaries=[1, -2])
    with pytest.warns(UserWarning, match="Invalid metric name"):
        bad = Gauge("has-dash")
    bad.set(1)  # dropped, as in Ray
    assert _value("has-dash", {}) is None


def test_the_head_sums_counters_and_histograms_and_keeps_the_latest_gauge():
    bounds = [1.0, 10.0]
    series = [
        ("jobs_done", {"node": "a"}, {"k": COUNTER, "d": "done", "b": None, "v": 3.0}),
        ("jobs_done", {"node": "a"}, {"k": COUNTER, "d": "done", "b": None, "v": 4.0}),
        ("jobs_done", {"node": "b"}, {"k": COUNTER, "d": "done", "b": None, "v": 1.0}),
        ("queue", {}, {"k": GAUGE, "d": "", "b": None, "v": [7.0, 100.0]}),
        ("queue", {}, {"k": GAUGE, "d": "", "b": None, "v": [5.0, 200.0]}),
        ("lat", {}, {"k": HISTOGRAM, "d": "", "b": bounds, "v": [[1, 0, 2], 40.5, 3]}),
        ("lat", {}, {"k": HISTOGRAM, "d": "", "b": bounds, "v": [[0, 1, 0], 2.0, 1]}),
        ("queue", {}, {"k": COUNTER, "d": "", "b": None, "v": 1.0}),  # kind clash: ignored
    ]
    merged = head_metrics.merge_series(series)
    assert merged["jobs_done"]["values"] == {(("node", "a"),): 7.0, (("node", "b"),): 1.0}
    assert merged["queue"]["values"][()] == [5.0, 200.0]
    assert merged["lat"]["values"][()] == ([1, 1, 2], 42.5, 4)


def test_exported_families_parse_with_rays_names(monkeypatch):
    series = [
        ("jobs_done", {"node": "a"}, {"k": COUNTER, "d": "done", "b": None, "v": 3.0}),
        ("lat", {}, {"k": HISTOGRAM, "d": "latency", "b": [1.0, 10.0], "v": [[1, 0, 2], 40.5, 3]}),
    ]
    monkeypatch.setattr(head_metrics, "read_series", lambda gcs: series)

    class Only:
        def collect(self):
            return head_metrics.user_metrics(None)  # type: ignore[arg-type]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Only())  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    done = families["ray_jobs_done"]
    assert done.type == "counter"
    first = done.samples[0]
    assert (first.name, first.labels, first.value) == ("ray_jobs_done_total", {"node": "a"}, 3.0)
    buckets = {s.labels["le"]: s.value for s in families["ray_lat"].samples if s.name == "ray_lat_bucket"}
    assert buckets == {"1.0": 1.0, "10.0": 1.0, "+Inf": 3.0}


def test_the_dashboard_port_falls_back_unless_given():
    taken = dashboard_socket("127.0.0.1", None)  # 8265 or the next free one
    try:
        port = taken.getsockname()[1]
        other = dashboard_socket("127.0.0.1", None)
        try:
            assert other.getsockname()[1] != port
            assert http_url(other, "127.0.0.1") == f"http://127.0.0.1:{other.getsockname()[1]}"
        finally:
            other.close()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}.*--dashboard-port"):
            dashboard_socket("127.0.0.1", port)
    finally:
        taken.close()
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback(socket.gethostname() + ".invalid")
