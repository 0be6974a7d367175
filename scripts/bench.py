"""Task and actor latency and throughput, rayr side by side with Ray when it is given.

    python scripts/bench.py                         # rayr only
    python scripts/bench.py --ray-python ~/rayvenv/bin/python --repeats 3

Each measurement runs in a fresh process, alternating runtimes, so both see the same
machine noise; the table shows medians over repeats and the rayr/Ray ratio (lower is
better for times, higher for rates). ``--json PATH`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

WORKLOAD = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "ray":
    import ray
else:
    import rayr as ray
ray.init(num_cpus=2, include_dashboard=False)

@ray.remote
def noop():
    return None

ray.get(noop.remote())
cold = time.perf_counter() - t0
ray.get([noop.remote() for _ in range(200)])  # warm both workers
lat = []
for _ in range(int(sys.argv[2])):
    s = time.perf_counter()
    ray.get(noop.remote())
    lat.append(time.perf_counter() - s)
lat.sort()
n = int(sys.argv[3])
s = time.perf_counter()
ray.get([noop.remote() for _ in range(n)])
rate = n / (time.perf_counter() - s)

@ray.remote
class Actor:
    def noop(self):
        return None

a = Actor.remote()
ray.get([a.noop.remote() for _ in range(200)])
alat = []
for _ in range(int(sys.argv[2])):
    s = time.perf_counter()
    ray.get(a.noop.remote())
    alat.append(time.perf_counter() - s)
s = time.perf_counter()
ray.get([a.noop.remote() for _ in range(n)])
arate = n / (time.perf_counter() - s)
s = time.perf_counter()
actors = [Actor.remote() for _ in range(10)]
ray.get([x.noop.remote() for x in actors])
create_rate = 10 / (time.perf_counter() - s)
ray.shutdown()
print(json.dumps({
    "cold_start_s": cold,
    "sync_task_median_ms": 1000 * statistics.median(lat),
    "sync_task_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    "async_tasks_per_s": rate,
    "sync_actor_call_median_ms": 1000 * statistics.median(alat),
    "async_actor_calls_per_s": arate,
    "actors_created_per_s": create_rate,
}))
"""

HIGHER_IS_BETTER = {"async_tasks_per_s", "async_actor_calls_per_s", "actors_created_per_s"}


def run_once(python: str, runtime: str, sync_n: int, async_n: int) -> dict[str, float]:
    out = subprocess.run(
        [python, "-c", WORKLOAD, runtime, str(sync_n), str(async_n)],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{runtime} run failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ray-python", help="a Python interpreter with Ray installed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync", type=int, default=1000, help="sync tasks timed one by one")
    parser.add_argument("--async-tasks", type=int, default=10_000, help="tasks submitted at once")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    runtimes = [("rayr", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in runtimes}
    for i in range(args.repeats):
        for name, python in runtimes:
            start = time.perf_counter()
            results[name].append(run_once(python, name, args.sync, args.async_tasks))
            took = time.perf_counter() - start
            print(f"[{i + 1}/{args.repeats}] {name} done in {took:.1f}s", file=sys.stderr)
    metrics = list(results["rayr"][0])
    med = {
        name: {m: statistics.median(r[m] for r in runs) for m in metrics}
        for name, runs in results.items()
    }
    header = f"{'metric':<28}{'rayr':>12}" + (f"{'ray':>12}{'rayr/ray':>10}" if "ray" in med else "")
    print(header)
    for m in metrics:
        line = f"{m:<28}{med['rayr'][m]:>12.3f}"
        if "ray" in med:
            ratio = med["rayr"][m] / med["ray"][m]
            better = ratio > 1 if m in HIGHER_IS_BETTER else ratio < 1
            line += f"{med['ray'][m]:>12.3f}{ratio:>9.2f}{'+' if better else '-'}"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "medians": med}, f, indent=2)


if __name__ == "__main__":
    main()
