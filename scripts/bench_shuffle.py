"""A map-reduce shuffle, rayr side by side with Ray when it is given.

    python scripts/bench_shuffle.py                                   # rayr: one node, three nodes
    python scripts/bench_shuffle.py --ray-python ~/rayvenv/bin/python --repeats 3

``--maps`` map tasks each make a block of ``--gib`` / maps bytes (numpy) and split it into
``--reducers`` parts (``num_returns``); each reduce task takes one part of every block and
returns their checksum, which the driver checks. Every part is a stored object (over the
inline limit), so the shuffle moves the whole data set through the object store once, and on
three nodes about two thirds of it between nodes. One node has 2 CPUs; three nodes have 1
CPU each (on this machine they share its cores). Each measurement runs in a fresh process,
alternating runtimes; the table shows medians and the rayr/Ray ratio of the makespan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKLOAD = r"""
import json, sys, time
import numpy as np
runtime, total = sys.argv[1], float(sys.argv[5])
nodes, maps, reducers = (int(a) for a in sys.argv[2:5])
if runtime == "ray":
    import ray
else:
    import rayr as ray
size = int(total * (1 << 30)) // maps // reducers * reducers  # a block, split evenly
cleanup = []
if nodes == 1:
    ray.init(num_cpus=2, include_dashboard=False)
elif runtime == "ray":
    from ray.cluster_utils import Cluster
    cluster = Cluster()
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cleanup.append(cluster.shutdown)
else:
    import contextlib
    from rayr.testing import Cluster, redis_server
    stack = contextlib.ExitStack()
    url = stack.enter_context(redis_server())
    cluster = Cluster(url)
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    ray.init(address=url, _cluster_name=cluster.name)
    cleanup += [stack.close, cluster.shutdown]

@ray.remote(num_returns=reducers)
def map_block(i):
    block = np.full(size, i % 251, dtype=np.uint8)
    return tuple(np.split(block, reducers))

@ray.remote
def reduce_parts(*parts):
    return int(sum(int(p.sum(dtype=np.uint64)) for p in parts))

ray.get(reduce_parts.remote(np.ones(4, dtype=np.uint8)))  # workers up
start = time.perf_counter()
blocks = [map_block.remote(i) for i in range(maps)]
outs = [reduce_parts.remote(*[blocks[i][j] for i in range(maps)]) for j in range(reducers)]
got = sum(ray.get(outs))
took = time.perf_counter() - start
assert got == sum(i % 251 for i in range(maps)) * size, (got, size)
del blocks, outs
ray.shutdown()
for fn in reversed(cleanup):
    fn()
print(json.dumps({"makespan_s": took, "GBps": maps * size / took / 1e9}))
"""


def run_once(python: str, runtime: str, nodes: int, maps: int, reducers: int, gib: float) -> dict[str, float]:
    out = subprocess.run([python, "-c", WORKLOAD, runtime, str(nodes), str(maps), str(reducers), str(gib)],
                         capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"{runtime} on {nodes} node(s) failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ray-python", help="a Python interpreter with Ray installed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--reducers", type=int, default=64)
    parser.add_argument("--gib", type=float, default=1.0, help="data shuffled, GiB")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    runtimes = [("rayr", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for i in range(args.repeats):
        for nodes in args.nodes:
            for name, python in runtimes:
                got = run_once(python, name, nodes, args.maps, args.reducers, args.gib)
                results.setdefault((name, nodes), []).append(got)
                print(f"[{i + 1}/{args.repeats}] {name}, {nodes} node(s): {got['makespan_s']:.2f} s",
                      file=sys.stderr)
    print(f"shuffle of {args.gib:g} GiB, {args.maps} maps x {args.reducers} reducers (medians)")
    print(f"{'nodes':<8}{'rayr s':>10}{'rayr GB/s':>11}" + (f"{'ray s':>10}{'ray GB/s':>10}{'rayr/ray':>10}"
                                                          if args.ray_python else ""))
    for nodes in args.nodes:
        ours = statistics.median(r["makespan_s"] for r in results[("rayr", nodes)])
        line = f"{nodes:<8}{ours:>10.2f}{args.gib * (1 << 30) / ours / 1e9:>11.2f}"
        if args.ray_python:
            theirs = statistics.median(r["makespan_s"] for r in results[("ray", nodes)])
            line += f"{theirs:>10.2f}{args.gib * (1 << 30) / theirs / 1e9:>10.2f}{ours / theirs:>10.2f}"
        print(line)


if __name__ == "__main__":
    main()
