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
import numpy as np
t0 = time.perf_counter()
if sys.argv[1] == "ray":
    import ray
else:
    import rayr as ray
ray.init(num_cpus=2, include_dashboard=False)

@ray.remote
def noop():
    return None

assert ray.get(noop.remote()) is None
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
assert ray.get([noop.remote() for _ in range(n)]) == [None] * n
rate = n / (time.perf_counter() - s)

def uss_of_runtime():
    # Unique set size (MB) of the driver and every process the runtime started for it,
    # read from /proc (Ray's virtualenv has no psutil). Both runtimes start their daemons
    # (Redis or GCS, raylet, workers, agents) as descendants of the driver; processes whose
    # command line names the runtime's session directory count too, in case one of them
    # was re-parented.
    import os
    parent, cmdline = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass  # exited meanwhile
    mine = {os.getpid()}
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in mine} - mine
        grew = bool(more)
        mine |= more
    session = None  # rayr's processes are all descendants of the driver
    if sys.argv[1] == "ray":
        session = ray._private.worker._global_node.get_session_dir_path()
    if session:
        mine |= {p for p, c in cmdline.items() if session in c}
    total = 0
    for pid in mine:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total / 1e6, len(mine)

time.sleep(2)  # let both runtimes settle (prestarted workers, agents)
idle_mb, idle_procs = uss_of_runtime()

@ray.remote
def child(i):
    return i

@ray.remote
def parent(k):
    return sum(ray.get([child.remote(i) for i in range(k)]))

fan_parents, fan_children = 20, 50
ray.get(parent.remote(2))
s = time.perf_counter()
sums = ray.get([parent.remote(fan_children) for _ in range(fan_parents)])
fan_rate = fan_parents * (fan_children + 1) / (time.perf_counter() - s)
assert sums == [fan_children * (fan_children - 1) // 2] * fan_parents, sums

@ray.remote
class Actor:
    def __init__(self):
        self.calls = 0

    def noop(self):
        self.calls += 1
        return self.calls

a = Actor.remote()
ray.get([a.noop.remote() for _ in range(200)])
alat = []
for _ in range(int(sys.argv[2])):
    s = time.perf_counter()
    ray.get(a.noop.remote())
    alat.append(time.perf_counter() - s)
before = ray.get(a.noop.remote())
s = time.perf_counter()
got = ray.get([a.noop.remote() for _ in range(n)])
arate = n / (time.perf_counter() - s)
assert got == list(range(before + 1, before + n + 1)), "actor calls ran out of order"
b = Actor.remote()
ray.get(b.noop.remote())
s = time.perf_counter()
got = ray.get([(a if i % 2 else b).noop.remote() for i in range(n)])
arate2 = n / (time.perf_counter() - s)
assert got[1::2] == list(range(before + n + 1, before + n + 1 + n // 2)), "actor a lost calls"
assert got[0::2] == list(range(2, 2 + (n + 1) // 2)), "actor b lost calls"
s = time.perf_counter()
actors = [Actor.remote() for _ in range(10)]
assert ray.get([x.noop.remote() for x in actors]) == [1] * 10
create_rate = 10 / (time.perf_counter() - s)
del actors

small = int(sys.argv[4])
s = time.perf_counter()
for i in range(small):
    assert ray.get(ray.put(i)) == i
small_rate = small / (time.perf_counter() - s)

big = np.random.default_rng(0).integers(0, 255, size=100_000_000, dtype=np.uint8)
puts, gets = [], []
for _ in range(3):
    s = time.perf_counter()
    ref = ray.put(big)
    puts.append(time.perf_counter() - s)
    s = time.perf_counter()
    back = ray.get(ref)
    gets.append(time.perf_counter() - s)
    assert back.nbytes == big.nbytes and not back.flags.writeable, "get copied the array"
    assert back[::4099].tolist() == big[::4099].tolist()
    del back, ref
put_gbps = big.nbytes / statistics.median(puts) / 1e9

@ray.remote
def checksum(arr):
    return int(arr[::4099].sum())

want = int(big[::4099].sum())
ray.get(checksum.remote(ray.put(np.ones(10, dtype=np.uint8))))
ref = ray.put(big)
args = []
for _ in range(3):
    s = time.perf_counter()
    assert ray.get(checksum.remote(ref)) == want
    args.append(time.perf_counter() - s)
del ref

@ray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds

durations = np.random.default_rng(1).uniform(0.001, 0.005, size=1000).tolist()
s = time.perf_counter()
pending = [nap.remote(d) for d in durations]
done = []
while pending:
    ready, pending = ray.wait(pending, num_returns=min(50, len(pending)))
    done.extend(ready)
makespan = time.perf_counter() - s
assert sorted(ray.get(done)) == sorted(durations)
ideal = sum(durations) / 2

ray.shutdown()
print(json.dumps({
    "cold_start_s": cold,
    "idle_memory_MB": idle_mb,
    "idle_processes": idle_procs,
    "sync_task_median_ms": 1000 * statistics.median(lat),
    "sync_task_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    "async_tasks_per_s": rate,
    "nested_tasks_per_s": fan_rate,
    "sync_actor_call_median_ms": 1000 * statistics.median(alat),
    "async_actor_calls_per_s": arate,
    "async_2actor_calls_per_s": arate2,
    "actors_created_per_s": create_rate,
    "small_put_get_per_s": small_rate,
    "put_100MB_GBps": put_gbps,
    "get_100MB_ms": 1000 * statistics.median(gets),
    "arg_100MB_by_ref_ms": 1000 * statistics.median(args),
    "wait_1000_makespan_s": makespan,
    "wait_1000_vs_ideal": makespan / ideal,
}))
"""

HIGHER_IS_BETTER = {
    "async_tasks_per_s", "nested_tasks_per_s", "async_actor_calls_per_s", "async_2actor_calls_per_s",
    "actors_created_per_s", "small_put_get_per_s", "put_100MB_GBps",
}


def run_once(python: str, runtime: str, sync_n: int, async_n: int, small_n: int) -> dict[str, float]:
    out = subprocess.run(
        [python, "-c", WORKLOAD, runtime, str(sync_n), str(async_n), str(small_n)],
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
    parser.add_argument("--small", type=int, default=2000, help="small put+get pairs")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    runtimes = [("rayr", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in runtimes}
    for i in range(args.repeats):
        for name, python in runtimes:
            start = time.perf_counter()
            results[name].append(run_once(python, name, args.sync, args.async_tasks, args.small))
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
