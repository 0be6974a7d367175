"""Multi-node figures on one host: three nodes, rayr's sharing only Redis.

    python scripts/bench_cluster.py [--mb 100] [--tasks 10000] [--repeats 3]
    python scripts/bench_cluster.py --ray-python ~/rayvenv/bin/python   # Ray alongside

Prints the rate of pulling a 100 MB object between nodes (random bytes, and compressible
ones produced on a third node) and the no-op task throughput across the three nodes, as
medians over fresh clusters, alternating runtimes. Ray's three nodes come from
``ray.cluster_utils.Cluster``; rayr's from ``rayr.testing.Cluster`` on one redis-server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any


def workload(ray: Any, node_ids: list[str], mb: int, tasks: int) -> dict[str, float]:
    """The same code for both runtimes; ``node_ids[0]`` is the driver's node."""
    import numpy as np

    if hasattr(ray, "util") and hasattr(ray.util, "scheduling_strategies"):
        strategies = ray.util.scheduling_strategies
    else:
        from rayr.util import scheduling_strategies as strategies
    on = [strategies.NodeAffinitySchedulingStrategy(n, soft=False) for n in node_ids]

    @ray.remote(num_cpus=0)
    def timed_pull(holder: list[Any]) -> tuple[float, int, int]:
        start = time.perf_counter()
        array = ray.get(holder[0])
        return time.perf_counter() - start, int(array[::4099].sum()), array.nbytes

    @ray.remote(num_cpus=0)
    def produce(n: int) -> Any:
        return np.full(n, 3, dtype=np.uint8)

    @ray.remote
    def noop() -> None:
        return None

    size = mb * 1_000_000
    results = {}
    data = np.random.default_rng(0).integers(0, 255, size=size, dtype=np.uint8)
    ref = ray.put(data)  # on the driver's node
    ray.get(timed_pull.options(scheduling_strategy=on[1]).remote([ray.put(np.zeros(1))]))
    seconds, checksum, nbytes = ray.get(timed_pull.options(scheduling_strategy=on[1]).remote([ref]))
    assert (checksum, nbytes) == (int(data[::4099].sum()), size), "the pulled object differs"
    results["pull_random_GBps"] = size / seconds / 1e9
    far = produce.options(scheduling_strategy=on[2]).remote(size)
    ray.wait([far], fetch_local=False)  # Ray would otherwise pull it here already
    start = time.perf_counter()
    got = ray.get(far)
    results["pull_compressible_GBps"] = size / (time.perf_counter() - start) / 1e9
    assert got.nbytes == size and int(got[::4099].sum()) == 3 * len(got[::4099])
    ray.get([noop.remote() for _ in range(300)])
    start = time.perf_counter()
    assert ray.get([noop.remote() for _ in range(tasks)]) == [None] * tasks
    results["three_node_tasks_per_s"] = tasks / (time.perf_counter() - start)
    return results


def run_rayr(mb: int, tasks: int) -> dict[str, float]:
    import rayr
    from rayr.testing import Cluster, redis_server

    with redis_server() as url:
        cluster = Cluster(url)
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        rayr.init(address=url, _cluster_name=cluster.name, log_to_driver=False)
        try:
            return workload(rayr, nodes, mb, tasks)
        finally:
            rayr.shutdown()
            cluster.shutdown()


def run_ray(mb: int, tasks: int) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        head = ray.get_runtime_context().get_node_id()
        others = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]
        return workload(ray, [head, *others], mb, tasks)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-python", help="a Python interpreter with Ray installed")
    parser.add_argument("--once", choices=["rayr", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:  # one fresh cluster, in a process of its own
        run = run_ray if args.once == "ray" else run_rayr
        print(json.dumps(run(args.mb, args.tasks)))
        return
    runtimes = [("rayr", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in runtimes}
    for i in range(args.repeats):
        for name, python in runtimes:
            out = subprocess.run(
                [python, __file__, "--once", name, "--mb", str(args.mb), "--tasks", str(args.tasks)],
                capture_output=True, text=True, timeout=600,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{name} run failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[{i + 1}/{args.repeats}] {name}: {runs[name][-1]}", file=sys.stderr)
    med = {name: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for name, rs in runs.items()}
    print(json.dumps({"runs": runs, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
