"""Multi-node figures on one host: three raylets sharing only Redis.

    python scripts/bench_cluster.py [--mb 100] [--tasks 10000]

Prints the rate of pulling an object between nodes through Redis (both directions) and
the no-op task throughput across three nodes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import rayr
from rayr.testing import Cluster, redis_server
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@rayr.remote
def timed_pull(holder):
    start = time.perf_counter()
    array = rayr.get(holder[0])
    return time.perf_counter() - start, int(array[-1])


@rayr.remote
def produce(n):
    return np.full(n, 3, dtype=np.uint8)


@rayr.remote
def noop():
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    results = {}
    with redis_server() as url:
        cluster = Cluster(url)
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        rayr.init(address=url, _cluster_name=cluster.name, log_to_driver=False)
        try:
            on = [NodeAffinitySchedulingStrategy(n, soft=False) for n in nodes]
            data = np.random.default_rng(0).integers(0, 255, size=size, dtype=np.uint8)
            ref = rayr.put(data)  # on the driver's node, nodes[0]
            rayr.get(timed_pull.options(scheduling_strategy=on[1]).remote([rayr.put(np.zeros(1))]))
            seconds, _ = rayr.get(timed_pull.options(scheduling_strategy=on[1]).remote([ref]))
            results["pull_random_GBps"] = size / seconds / 1e9
            far = produce.options(scheduling_strategy=on[2]).remote(size)
            rayr.wait([far])
            start = time.perf_counter()
            rayr.get(far)
            results["pull_compressible_GBps"] = size / (time.perf_counter() - start) / 1e9
            rayr.get([noop.remote() for _ in range(300)])
            start = time.perf_counter()
            rayr.get([noop.remote() for _ in range(args.tasks)])
            results["three_node_tasks_per_s"] = args.tasks / (time.perf_counter() - start)
        finally:
            rayr.shutdown()
            cluster.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
