"""How one rayr cluster's load divides over the masters of a Redis Cluster.

Starts a Redis Cluster of three masters on loopback and a two-node rayr cluster on it, runs
each workload (no-op tasks, actor calls, objects pulled across nodes, idle) and reports, per
master, the deltas of the server's own counters around it: main-thread CPU, commands
processed and bytes received. The master serving the tables' hash tag is marked; objects
and inboxes use their owner's spread tag and object transfers the object's (docs/
architecture.md, key space), so that load lands elsewhere.

    python scripts/bench_shards.py [--tasks 5000] [--calls 5000] [--owners 4] [--objects 8] [--mb 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import rayr
from rayr.gcs.address import slot_of, spread_slot
from rayr.keys import Keys, spread_tag
from rayr.testing import Cluster
from rayr.testing_redis import RedisClusterSet, redis_cluster, server_binary
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PASSWORD = "bench-shards"


def counters(cluster_set: RedisClusterSet) -> list[dict[str, float]]:
    """Per master: main-thread CPU seconds, commands processed, bytes received."""
    out = []
    for master in cluster_set.masters:
        client: Any = master.client()
        try:
            cpu, stats = client.info("cpu"), client.info("stats")
        finally:
            client.close()
        main = ("used_cpu_sys_main_thread", "used_cpu_user_main_thread")
        names = main if main[0] in cpu else ("used_cpu_sys", "used_cpu_user")
        out.append({"cpu_s": sum(float(cpu[n]) for n in names),
                    "commands": float(stats["total_commands_processed"]),
                    "input_mb": float(stats["total_net_input_bytes"]) / 1e6})
    return out


def command_calls(master: Any) -> dict[str, int]:
    """Calls per command on one master (INFO commandstats)."""
    client: Any = master.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def measure(cluster_set: RedisClusterSet, work: Callable[[], Any]) -> tuple[list[dict[str, Any]], float]:
    before = counters(cluster_set)
    calls_before = [command_calls(m) for m in cluster_set.masters]
    start = time.perf_counter()
    work()
    elapsed = time.perf_counter() - start
    after = counters(cluster_set)
    out: list[dict[str, Any]] = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    for row, master, was in zip(out, cluster_set.masters, calls_before, strict=True):
        now = command_calls(master)
        row["calls"] = {c: n - was.get(c, 0) for c, n in now.items() if n - was.get(c, 0) > 0}
    return out, elapsed


@rayr.remote
def noop() -> None:
    return None


@rayr.remote
def checksum(data: Any) -> int:
    return int(data[::4096].sum())


@rayr.remote
class Pinger:
    def ping(self) -> int:
        return 1


@rayr.remote
class Submitter:
    """Submits and gets tasks of its own: their results are under its inbox's spread tag."""

    def worker(self) -> str:
        return rayr.get_runtime_context().get_worker_id()

    def run(self, n: int) -> int:
        return len(rayr.get([noop.remote() for _ in range(n)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--owners", type=int, default=4, help="actors that submit tasks of their own")
    parser.add_argument("--objects", type=int, default=8, help="objects pulled by the other node")
    parser.add_argument("--mb", type=int, default=32, help="size of each object")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary, why = server_binary()
    if binary is None:
        sys.exit(f"no Redis server binary: {why}")
    import numpy as np

    workdir = tempfile.mkdtemp(prefix="rayr-bench-shards-")
    results: dict[str, Any] = {}
    try:
        with redis_cluster(binary, workdir, password=PASSWORD) as cluster_set:
            cluster = Cluster(cluster_set.url, redis_password=PASSWORD,
                              temp_dir=os.path.join(workdir, "rayr"))
            try:
                here = cluster.add_node(num_cpus=2)
                other = cluster.add_node(num_cpus=2)
                rayr.init(address=cluster.address, _cluster_name=cluster.name, _redis_password=PASSWORD)
                tables = cluster_set.owner_of(slot_of(cluster.name))
                results["tables_master"] = tables
                job = rayr.get_runtime_context().get_job_id()
                spread = spread_slot(Keys(cluster.name), spread_tag(job))
                results["events_master"] = cluster_set.owner_of(spread)
                rayr.get([noop.remote() for _ in range(200)])  # workers started, functions exported
                pinger = Pinger.remote()
                rayr.get(pinger.ping.remote())
                submitters = [Submitter.remote() for _ in range(args.owners)]
                keys = Keys(cluster.name)
                owners = [rayr.get_runtime_context().get_worker_id(),
                          *rayr.get([s.worker.remote() for s in submitters])]
                results["owner_masters"] = [cluster_set.owner_of(spread_slot(keys, spread_tag(w)))
                                            for w in owners]
                rayr.get([s.run.remote(10) for s in submitters])
                affinity = NodeAffinitySchedulingStrategy(other, soft=False)
                on_other = checksum.options(scheduling_strategy=affinity)
                rng = np.random.default_rng(0)
                objects = [rayr.put(rng.integers(0, 255, args.mb << 20, dtype=np.uint8))
                           for _ in range(args.objects)]
                assert here != other
                workloads: dict[str, Callable[[], Any]] = {
                    f"{args.tasks} no-op tasks": lambda: rayr.get([noop.remote() for _ in range(args.tasks)]),
                    f"{args.calls} actor calls": lambda: rayr.get(
                        [pinger.ping.remote() for _ in range(args.calls)]),
                    f"{args.tasks} tasks from {args.owners} actors": lambda: rayr.get(
                        [s.run.remote(args.tasks // args.owners) for s in submitters]),
                    f"{args.objects} x {args.mb} MB pulled across": lambda: rayr.get(
                        [on_other.remote(o) for o in objects]),
                    f"idle {args.idle_s:g} s": lambda: time.sleep(args.idle_s),
                }
                for name, work in workloads.items():
                    deltas, elapsed = measure(cluster_set, work)
                    results[name] = {"elapsed_s": elapsed, "masters": deltas}
            finally:
                rayr.shutdown()
                cluster.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    tables = results.pop("tables_master")
    events = results.pop("events_master")
    owner_masters = results.pop("owner_masters")
    print(f"master {tables} serves the tables' slot (marked *); master {events} the job's task events "
          "(written a flush interval after the tasks: they show in the next row); the driver's "
          f"objects and inbox are on master {owner_masters[0]}, the submitting actors' on "
          f"{owner_masters[1:]}")
    print(f"{'workload':34} {'time':>7}  " + "  ".join(
        f"{'m' + str(i) + ('*' if i == tables else '') + ' cpu ms / cmds / MB in':>30}" for i in range(3)))
    for name, row in results.items():
        cells = "  ".join(f"{m['cpu_s'] * 1000:>10.0f} / {m['commands']:>7.0f} / {m['input_mb']:>7.1f}"
                          for m in row["masters"])
        print(f"{name:34} {row['elapsed_s']:>6.2f}s  {cells}")
        for i, m in enumerate(row["masters"]):
            top = sorted(m["calls"].items(), key=lambda kv: -kv[1])[:8]
            if top and sum(n for _, n in top) > 50:
                print(f"{'':34} m{i} calls: " + ", ".join(f"{c} {n}" for c, n in top))


if __name__ == "__main__":
    main()
