"""What the dashboard costs: its memory, its CPU on an idle and a busy cluster (nobody looking,
a page open, Prometheus scraping), how long its endpoints take as the task events grow, and
what it adds to init().

    python scripts/bench_dashboard.py [--seconds 20] [--tasks 20000]

A "page open" is what the browser does on the tasks page: /api/tasks and /api/timeline
every 2 s (the cluster page's /api/overview reads the same cached task events).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from typing import Any

import psutil

import rayr
from rayr.context import state
from rayr.util.state import list_tasks


@rayr.remote
def noop(i: int) -> int:
    return i


def _get(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return time.perf_counter() - start


class Viewer(threading.Thread):
    """Polls like an open tasks page (and a Prometheus scrape every 15 s, if asked)."""

    def __init__(self, base: str, scrape: bool) -> None:
        super().__init__(daemon=True)
        self.base, self.scrape = base, scrape
        self.stop = threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        next_scrape = 0.0
        while not self.stop.is_set():
            self.times.append(_get(self.base + "/api/tasks") + _get(self.base + "/api/timeline"))
            if self.scrape and time.monotonic() >= next_scrape:
                _get(self.base + "/metrics")
                next_scrape = time.monotonic() + 15
            self.stop.wait(2.0)


def cpu_over(proc: psutil.Process, seconds: float, work: Any = None) -> float:
    """The process's CPU use (percent of one core) over ``seconds`` while ``work`` runs."""
    before = proc.cpu_times()
    start = time.monotonic()
    if work is not None:
        work(seconds)
    else:
        time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (time.monotonic() - start)


def busy(seconds: float) -> None:
    """Keep the cluster running 500 tasks a second for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rayr.get([noop.remote(i) for i in range(100)])
        time.sleep(0.2)


def init_time(include_dashboard: bool, runs: int = 5) -> float:
    best = []
    for _ in range(runs):
        start = time.perf_counter()
        rayr.init(num_cpus=1, include_dashboard=include_dashboard)
        best.append(time.perf_counter() - start)
        rayr.shutdown()
    return sorted(best)[len(best) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tasks", type=int, default=20_000)
    opts = parser.parse_args()
    out: dict[str, Any] = {
        "init_s_without_dashboard": round(init_time(False), 4),
        "init_s_with_dashboard": round(init_time(True), 4),
    }
    context = rayr.init(num_cpus=2)
    base = context.dashboard_url
    cluster = state.cluster
    assert cluster is not None and cluster.dashboard_proc is not None
    proc = psutil.Process(cluster.dashboard_proc.pid)
    time.sleep(2)
    info = proc.memory_full_info()
    out["memory_mib_unopened"] = {"rss": round(info.rss / 2**20, 1), "uss": round(info.uss / 2**20, 1)}
    _get(base + "/api/version")  # loads the server's libraries
    info = proc.memory_full_info()
    out["memory_mib"] = {"rss": round(info.rss / 2**20, 1), "uss": round(info.uss / 2**20, 1)}
    out["cpu_percent"] = {"idle_nobody_looking": round(cpu_over(proc, opts.seconds), 2)}
    viewer = Viewer(base, scrape=True)
    viewer.start()
    out["cpu_percent"]["idle_page_open"] = round(cpu_over(proc, opts.seconds), 2)
    out["cpu_percent"]["busy_page_open"] = round(cpu_over(proc, opts.seconds, busy), 2)
    viewer.stop.set()
    viewer.join()
    out["cpu_percent"]["busy_nobody_looking"] = round(cpu_over(proc, opts.seconds, busy), 2)
    # endpoint times (the task cache expired) as the task events grow
    timings = {}
    held = len(list_tasks(limit=None, raise_on_missing_output=False))
    for target in sorted({held, max(held, opts.tasks)}):
        while held < target:
            batch = min(5000, target - held)
            rayr.get([noop.remote(i) for i in range(batch)])
            held += batch
        time.sleep(1.5)  # the events are flushed

        def cold(path: str) -> float:
            time.sleep(1.1)  # past the dashboard's 1 s task cache
            return _get(base + path)

        timings[str(held)] = {path: round(min(cold(path) for _ in range(3)) * 1000, 1)
                              for path in ("/api/tasks", "/api/overview", "/metrics")}
    out["endpoint_ms_by_tasks_held"] = timings
    info = proc.memory_full_info()
    out["memory_mib_after"] = {"rss": round(info.rss / 2**20, 1), "uss": round(info.uss / 2**20, 1)}
    out["page_poll_ms_median"] = round(sorted(viewer.times)[len(viewer.times) // 2] * 1000, 1)
    rayr.shutdown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
