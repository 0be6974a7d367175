"""Chaos: random raylets and workers SIGKILLed or SIGSTOPped while a workload runs.

Four nodes (separate raylet processes sharing only Redis) run 10,000 tasks and 2,000 calls to
20 actors. Every ``--every`` seconds one fault strikes, chosen at random: SIGKILL of a raylet,
SIGSTOP of a raylet for longer than the node timeout (then SIGCONT: it learns it was declared
dead and exits), SIGKILL of a worker (task or actor), or SIGSTOP of a worker for a few
seconds. A raylet that dies is replaced by a new node, as a supervisor would. The head node's
raylet is spared (the driver's own store lives there). Each run reports its faults, how many
results were lost or wrong (must be 0) and the makespan against a fault-free run.

    python scripts/chaos.py [--runs 5] [--every 10] [--tasks 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import psutil

import rayr
from rayr.testing import Cluster, redis_server

NODES = 4
CPUS_PER_NODE = 2
ACTORS = 20
CALLS_PER_ACTOR = 100
NODE_TIMEOUT_S = 5.0


@rayr.remote(max_retries=-1)
def work(i: int) -> int:
    time.sleep(0.02)
    return i * i


@rayr.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Doubler:
    def double(self, x: int) -> int:
        time.sleep(0.005)
        return 2 * x


class Chaos(threading.Thread):
    """Strikes one fault every ``every`` seconds until stopped; replaces nodes that die."""

    def __init__(self, cluster: Cluster, head: str, every: float, rng: random.Random, verbose: bool) -> None:
        super().__init__(daemon=True)
        self.cluster, self.head, self.every, self.rng = cluster, head, every, rng
        self.verbose = verbose
        self.started = time.monotonic()
        self.faults: Counter[str] = Counter()
        self.stop = threading.Event()
        self.errors: list[str] = []

    def raylets(self) -> dict[str, Any]:
        return {n: p for n, p in self.cluster._local.raylets.items() if n != self.head and p.poll() is None}

    def workers(self) -> list[psutil.Process]:
        out = []
        for proc in self.cluster._local.raylets.values():
            try:
                out += [c for c in psutil.Process(proc.pid).children(recursive=True)
                        if c.name() == "rayr-worker"]
            except psutil.Error:
                continue
        return out

    def say(self, what: str) -> None:
        if self.verbose:
            print(f"  {time.monotonic() - self.started:6.1f}s: {what}", flush=True)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.strike(self.rng.choice(["kill raylet", "stop raylet", "kill worker", "stop worker"]))
            except Exception as err:  # report, keep striking
                self.errors.append(f"{type(err).__name__}: {err}")

    def strike(self, kind: str) -> None:
        if kind.endswith("raylet"):
            raylets = self.raylets()
            if not raylets:
                return
            node = self.rng.choice(sorted(raylets))
            proc = raylets[node]
            self.say(f"{kind} {node[:12]} (pid {proc.pid})")
            if kind == "kill raylet":
                proc.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGSTOP)
                self.stop.wait(NODE_TIMEOUT_S + 3)  # long enough to be declared dead
                proc.send_signal(signal.SIGCONT)
            proc.wait()
            self.cluster._local.raylets.pop(node)
            self.cluster._local.clean_store(node)
            self.cluster.add_node(num_cpus=CPUS_PER_NODE)  # a supervisor would start one
        else:
            workers = self.workers()
            if not workers:
                return
            worker = self.rng.choice(workers)
            self.say(f"{kind} pid {worker.pid}")
            if kind == "kill worker":
                worker.send_signal(signal.SIGKILL)
            else:
                worker.send_signal(signal.SIGSTOP)
                self.stop.wait(3)
                try:
                    worker.send_signal(signal.SIGCONT)
                except psutil.NoSuchProcess:
                    pass
        self.faults[kind] += 1


def one_run(url: str, tasks: int, every: float | None, seed: int, verbose: bool = False) -> dict[str, Any]:
    cluster = Cluster(url, node_timeout_s=NODE_TIMEOUT_S)
    chaos: Chaos | None = None
    try:
        nodes = [cluster.add_node(num_cpus=CPUS_PER_NODE) for _ in range(NODES)]
        rayr.init(address=url, _cluster_name=cluster.name, log_to_driver=False)
        actors = [Doubler.remote() for _ in range(ACTORS)]
        rayr.get([a.double.remote(0) for a in actors], timeout=120)
        rayr.get([work.remote(i) for i in range(50)], timeout=120)  # workers up on every node
        start = time.monotonic()
        if every is not None:
            chaos = Chaos(cluster, nodes[0], every, random.Random(seed), verbose)
            chaos.start()
        refs = [work.remote(i) for i in range(tasks)]
        calls = [actors[i % ACTORS].double.remote(i) for i in range(ACTORS * CALLS_PER_ACTOR)]
        lost = wrong = 0
        pending = refs + calls
        deadline = time.monotonic() + 900
        while pending and time.monotonic() < deadline:
            _, pending = rayr.wait(pending, num_returns=len(pending), timeout=10)
            if verbose:
                print(f"  {time.monotonic() - start:6.1f}s: {len(pending)} results outstanding", flush=True)
        makespan = time.monotonic() - start
        if chaos is not None:
            chaos.stop.set()
            chaos.join()
        lost += len(pending)
        expected_values = [(i * i, r) for i, r in enumerate(refs)] + [(2 * i, c) for i, c in enumerate(calls)]
        for expected, ref in expected_values:
            if ref in pending:
                continue
            try:
                wrong += rayr.get(ref, timeout=60) != expected
            except Exception:
                lost += 1
        return {"makespan": makespan, "lost": lost, "wrong": wrong,
                "faults": dict(chaos.faults) if chaos else {}, "errors": chaos.errors if chaos else []}
    finally:
        if chaos is not None:
            chaos.stop.set()
            chaos.join()
        rayr.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print each fault and progress")
    opts = parser.parse_args()
    with redis_server() as url:
        base = one_run(url, opts.tasks, None, 0)
        print(f"fault-free: makespan {base['makespan']:.1f}s, lost {base['lost']}, wrong {base['wrong']}",
              flush=True)
        for run in range(opts.runs):
            out = one_run(url, opts.tasks, opts.every, opts.seed + run, opts.verbose)
            faults = ", ".join(f"{k} x{v}" for k, v in sorted(out["faults"].items())) or "none"
            ratio = out["makespan"] / base["makespan"]
            print(f"run {run + 1}: makespan {out['makespan']:.1f}s ({ratio:.2f}x), "
                  f"lost {out['lost']}, wrong {out['wrong']}; faults: {faults}"
                  + (f"; chaos errors: {out['errors']}" if out["errors"] else ""), flush=True)


if __name__ == "__main__":
    main()
