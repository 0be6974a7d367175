"""What task events cost: throughput with events on and off, Redis memory per 100k tasks,
and how fast `rayr list tasks --limit 100` answers with 100k finished tasks in a job.

    python scripts/bench_task_events.py [--repeats 3] [--tasks 100000]

Throughput runs alternate (off, on) in fresh processes, so both see the same machine noise;
the table gives medians and the on/off ratio, and the CPU every process of the cluster spent
per task (including sending the events afterwards), which this shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

THROUGHPUT = r"""
import json, sys, time
import psutil
import rayr as ray
ray.init(num_cpus=2, include_dashboard=False)
me = psutil.Process()

def cpu():  # CPU seconds of this driver and every process of its cluster (Redis included)
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total

@ray.remote
def noop(): return None
@ray.remote
class A:
    def f(self): return None
a = A.remote(); ray.get(a.f.remote()); ray.get([noop.remote() for _ in range(500)])
out = {"async_tasks_per_s": [], "async_actor_calls_per_s": [], "cpu_us_per_task": [],
       "cpu_us_per_actor_call": []}
for _ in range(3):
    c, s = cpu(), time.perf_counter(); ray.get([noop.remote() for _ in range(10_000)])
    out["async_tasks_per_s"].append(10_000 / (time.perf_counter() - s))
    time.sleep(1.2)  # the events of the batch are sent (and counted) too
    out["cpu_us_per_task"].append(-(cpu() - c) / 10_000 * 1e6)
    c, s = cpu(), time.perf_counter(); ray.get([a.f.remote() for _ in range(10_000)])
    out["async_actor_calls_per_s"].append(10_000 / (time.perf_counter() - s))
    time.sleep(1.2)
    out["cpu_us_per_actor_call"].append(-(cpu() - c) / 10_000 * 1e6)
# best of three (CPU as negatives, so max is the least CPU)
print(json.dumps({k: abs(max(v)) for k, v in out.items()}))
ray.shutdown()
"""

SCALE = r"""
import json, os, subprocess, sys, time
import rayr as ray
from rayr import context
from rayr.util.state import list_tasks
n = int(sys.argv[1])
ray.init(num_cpus=2, include_dashboard=False)
@ray.remote
def noop(): return None
for start in range(0, n, 10_000):
    ray.get([noop.remote() for _ in range(min(10_000, n - start))])
core = context.state.core
job, keys, r = core.job_id.hex(), core.gcs.keys, core.gcs.r
deadline = time.time() + 60
while int(r.hlen(keys.task_events_exec(job))) < n and time.time() < deadline:
    time.sleep(0.2)
views = int(r.hlen(keys.task_events_exec(job))) + int(r.hlen(keys.task_events_owner(job)))
memory = sum(int(r.memory_usage(k) or 0) for k in (keys.task_events_exec(job), keys.task_events_owner(job)))
s = time.perf_counter(); listed = list_tasks(limit=100); api_s = time.perf_counter() - s
kw = r.connection_pool.connection_kwargs
env = {**os.environ, "RAYR_ADDRESS": f"{kw['host']}:{kw['port']}",
       "RAYR_REDIS_PASSWORD": kw.get("password") or ""}
s = time.perf_counter()
out = subprocess.run([sys.executable, "-m", "rayr.cli.main", "list", "tasks", "--limit", "100"], env=env,
                     capture_output=True, text=True)
cli_s = time.perf_counter() - s
s = time.perf_counter()
every = list_tasks(limit=None, filters=[("job_id", "=", job)])
all_s = time.perf_counter() - s
print(json.dumps({"tasks": n, "views": views, "redis_bytes": memory, "bytes_per_task": memory / n,
                  "list_100_api_s": api_s, "list_100_cli_s": cli_s, "cli_rc": out.returncode,
                  "listed": len(listed), "list_all_s": all_s, "all_listed": len(every)}))
ray.shutdown()
"""


def run(code: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100_000)
    opts = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for i in range(opts.repeats):
        for mode in ("off", "on"):
            started = time.perf_counter()
            runs[mode].append(run(THROUGHPUT, [], {"RAYR_TASK_EVENTS": "0" if mode == "off" else "1"}))
            took = time.perf_counter() - started
            print(f"[{i + 1}/{opts.repeats}] events {mode}: {took:.1f}s", file=sys.stderr)
    print(f"{'metric':<26}{'events off':>12}{'events on':>12}{'on/off':>8}")
    for metric in runs["off"][0]:
        off = statistics.median(r[metric] for r in runs["off"])
        on = statistics.median(r[metric] for r in runs["on"])
        print(f"{metric:<26}{off:>12.1f}{on:>12.1f}{on / off:>8.2f}")
    scale = run(SCALE, [str(opts.tasks)], {"RAYR_TASK_EVENTS": "1"})
    print(json.dumps(scale, indent=2))


if __name__ == "__main__":
    main()
