"""Failure detection and recovery times: three raylets on this host, 1,000 short tasks, one raylet
killed with SIGKILL mid-run. Prints the time from the kill until the monitor declares the node
DEAD, and the time until every result is in (against the same run with no kill).

    python scripts/bench_recovery.py [--node-timeout 5.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time

import rayr
from rayr.testing import Cluster, redis_server


@rayr.remote(max_retries=3)
def work(i: int) -> int:
    time.sleep(0.005)
    return i * i


def one_run(url: str, node_timeout: float, kill: bool) -> tuple[float, float, float]:
    cluster = Cluster(url, node_timeout_s=node_timeout)
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        rayr.init(address=url, _cluster_name=cluster.name, log_to_driver=False)
        rayr.get([work.remote(i) for i in range(30)])  # workers started on every node
        start = time.monotonic()
        refs = [work.remote(i) for i in range(1000)]
        time.sleep(0.5)
        killed_at = time.monotonic()
        detected = float("nan")
        if kill:
            cluster._local.raylets[nodes[1]].send_signal(signal.SIGKILL)
        pending = refs
        while pending:
            _, pending = rayr.wait(pending, num_returns=len(pending), timeout=0.05)
            if kill and detected != detected and not any(
                n["NodeID"] == nodes[1] and n["Alive"] for n in rayr.nodes()
            ):
                detected = time.monotonic() - killed_at
        done = time.monotonic()
        assert rayr.get(refs) == [i * i for i in range(1000)]
        if kill and detected != detected:  # finished before the node was declared dead
            while any(n["NodeID"] == nodes[1] and n["Alive"] for n in rayr.nodes()):
                time.sleep(0.02)
            detected = time.monotonic() - killed_at
        return done - start, done - killed_at, detected
    finally:
        rayr.shutdown()
        if kill:
            cluster._local.raylets.pop(nodes[1]).wait()
            cluster._local.clean_store(nodes[1])
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--node-timeout", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    with redis_server() as url:
        base, killed, detect, after_kill = [], [], [], []
        for _ in range(opts.repeats):
            base.append(one_run(url, opts.node_timeout, kill=False)[0])
            total, since_kill, detected = one_run(url, opts.node_timeout, kill=True)
            killed.append(total)
            after_kill.append(since_kill)
            detect.append(detected)
    med = statistics.median
    print(f"node timeout {opts.node_timeout}s, 1,000 x 5 ms tasks on 3 one-CPU nodes, {opts.repeats} runs")
    every = [round(x, 2) for x in detect]
    print(f"  detection (kill -> node DEAD):       median {med(detect):.2f}s  all {every}")
    print(f"  makespan without a kill:             median {med(base):.2f}s")
    print(f"  makespan with a raylet killed:       median {med(killed):.2f}s")
    print(f"  recovery (kill -> every result in):  median {med(after_kill):.2f}s")


if __name__ == "__main__":
    main()
