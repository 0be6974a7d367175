"""Ray's application metrics: ``Counter``, ``Gauge`` and ``Histogram`` with tags.

Any process (driver, task, actor) records values here; they stay in the process (one dict
update under a lock) and go to the GCS every ``metrics_report_interval_s`` with the core
worker's other periodic reports, one hash per process (``metrics:<worker>``) that expires
``metrics_retention_s`` after the process stops reporting. The head's dashboard merges every
process's series on each scrape of ``/metrics``: counters and histograms are summed over
processes, a gauge shows the value set last. As in Ray, the exported names carry the prefix
``ray_`` (a counter ``n`` is ``ray_n_total``), so dashboards written for Ray read them.
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

from rayr import context

if TYPE_CHECKING:
    from rayr.core import CoreWorker

_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
Tags = tuple[tuple[str, str], ...]


class MetricsRecorder:
    """This process's metric series and their reporting to the GCS (one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._defs: dict[str, dict[str, Any]] = {}  # name -> kind, description, boundaries
        self._series: dict[tuple[str, Tags], Any] = {}  # (name, tags) -> value
        self._dirty: set[tuple[str, Tags]] = set()
        self._core: CoreWorker | None = None
        self._process = ""
        self._due = 0.0
        self._expire_due = 0.0

    # ------------------------------------------------------------- recording
    def define(self, name: str, kind: str, description: str, boundaries: list[float] | None) -> None:
        with self._lock:
            self._defs[name] = {"k": kind, "d": description, "b": boundaries}

    def record(self, name: str, tags: Tags, kind: str, value: float) -> None:
        key = (name, tags)
        with self._lock:
            if kind == COUNTER:
                self._series[key] = self._series.get(key, 0.0) + value
            elif kind == GAUGE:
                self._series[key] = (value, time.time())
            else:
                bounds = self._defs[name]["b"]
                counts, total, n = self._series.get(key) or ([0] * (len(bounds) + 1), 0.0, 0)
                counts[_bucket(bounds, value)] += 1
                self._series[key] = (counts, total + value, n + 1)
            self._dirty.add(key)
        self._attach()

    def value(self, name: str, tags: Tags) -> Any:
        """What this process holds for one series (None if never recorded)."""
        with self._lock:
            return self._series.get((name, tags))

    # ------------------------------------------------------------- reporting
    def _attach(self) -> None:
        """Report through the connected core worker (a driver may record before init())."""
        core = context.state.core
        if core is None or core is self._core:
            return
        with self._lock:
            old, self._core, self._process = self._process, core, core.worker_hex
            self._dirty = set(self._series)  # everything goes under the new process id
        core.reporters.append(self)
        if old:
            core.commands.send([("DEL", core.keys.metrics(old))])

    def flush_due(self) -> None:
        """Send what changed once the report interval has passed (the core's housekeeping)."""
        core = self._core
        if core is not None and time.monotonic() >= self._due:
            self._due = time.monotonic() + core.settings.metrics_report_interval_s
            self.flush()

    def flush(self) -> None:
        """Send every changed series now (on the command stream, no waiting)."""
        core = self._core
        if core is None:
            return
        with self._lock:
            fields: list[str] = []
            for name, tags in self._dirty:
                fields += [json.dumps([name, dict(tags)]), json.dumps({**self._defs[name],
                                                                      "v": self._series[(name, tags)]})]
            self._dirty.clear()
        now = time.monotonic()
        retention_ms = int(core.settings.metrics_retention_s * 1000)
        if not fields and now < self._expire_due:
            return
        # the expiry is refreshed well within the retention, changed or not
        self._expire_due = now + core.settings.metrics_retention_s / 4
        key = core.keys.metrics(self._process)
        commands: list[tuple[Any, ...]] = [("SADD", core.keys.metrics_index, self._process)]
        if fields:
            commands.append(("HSET", key, *fields))
        commands.append(("PEXPIRE", key, retention_ms))
        core.commands.send(commands)


def _bucket(bounds: list[float], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def _recorder() -> MetricsRecorder:
    with context.state.lock:
        if context.state.metrics is None:
            context.state.metrics = MetricsRecorder()
        return context.state.metrics


class Metric:
    """What the three kinds share: a name, a description, tag keys and default tags.

    Raises:
        ValueError: an empty name.
        TypeError: ``tag_keys`` is not a tuple of strings.
    """

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None,
                 _boundaries: list[float] | None = None) -> None:
        if not name:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        tag_keys = tag_keys if tag_keys is not None else ()
        if not isinstance(tag_keys, tuple):
            raise TypeError("tag_keys should be a tuple of strings, e.g. ('route',); got "
                            f"{type(tag_keys).__name__}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"tag keys must be strings; got {key!r} ({type(key).__name__})")
        self._name = name
        self._description = description
        self._tag_keys = tag_keys
        self._default_tags: dict[str, str] = {}
        # as Ray: a name Prometheus cannot carry is warned about and its values are dropped
        self._discard = not _VALID_NAME.match(name)
        if self._discard:
            warnings.warn(f"Invalid metric name: {name!r}. Its values will not be collected. Metric names "
                          "can only contain letters, numbers, _ and :, and cannot start with a number.",
                          UserWarning, stacklevel=3)
        else:
            _recorder().define(name, self._kind, description, _boundaries)

    def set_default_tags(self, default_tags: dict[str, str]) -> Metric:
        """Tags every later record carries unless it gives its own; returns the metric.

        Raises:
            ValueError: a key that is not one of the metric's tag keys.
        """
        for key, value in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}; this metric's tag keys are {self._tag_keys}")
            if not isinstance(value, str):
                raise TypeError(f"Tag values must be str; got {value!r} for {key!r}")
        self._default_tags = dict(default_tags)
        return self

    @property
    def info(self) -> dict[str, Any]:
        """Name, description, tag keys and default tags."""
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": dict(self._default_tags)}

    def _tags(self, tags: dict[str, str] | None) -> Tags:
        final = {**self._default_tags, **(tags or {})}
        for key, value in final.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}; this metric's tag keys are {self._tag_keys}")
            if not isinstance(value, str):
                raise TypeError(f"Tag values must be str; got {value!r} for {key!r}")
        missing = [k for k in self._tag_keys if k not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s) {missing} of metric {self._name!r}: pass them "
                             "in tags= or set_default_tags()")
        return tuple(sorted(final.items()))

    def _record(self, value: float, tags: dict[str, str] | None) -> None:
        final = self._tags(tags)
        if not self._discard:
            _recorder().record(self._name, final, self._kind, float(value))


class Counter(Metric):
    """A cumulative count that only goes up (Prometheus' counter)."""

    _kind = COUNTER

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` (positive) to the series of ``tags``.

        Raises:
            ValueError: ``value`` is not positive, or the tags do not match the tag keys.
        """
        if value <= 0:
            raise ValueError(f"value must be > 0 to increment a Counter; got {value}")
        self._record(value, tags)


class Gauge(Metric):
    """A value that goes up and down (Prometheus' gauge)."""

    _kind = GAUGE

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Set the series of ``tags`` to ``value``."""
        self._record(value, tags)


class Histogram(Metric):
    """Observations counted into buckets with the given upper ``boundaries`` (Prometheus'
    histogram).

    Raises:
        ValueError: no boundaries, or one that is not positive.
    """

    _kind = HISTOGRAM

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None) -> None:
        if not boundaries:
            raise ValueError("Histogram needs boundaries, e.g. boundaries=[0.1, 1, 10]")
        for i, bound in enumerate(boundaries):
            if not isinstance(bound, int | float) or bound <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries!r}: "
                                 "boundaries must be positive numbers")
        self.boundaries = sorted(float(b) for b in boundaries)
        super().__init__(name, description, tag_keys, _boundaries=self.boundaries)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Count ``value`` into its bucket of the series of ``tags``."""
        self._record(value, tags)


__all__ = ["Counter", "Gauge", "Histogram", "Metric", "MetricsRecorder"]
