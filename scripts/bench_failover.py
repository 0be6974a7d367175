"""Sentinel failover under load: a master, a replica and three Sentinels on loopback (Debian's
redis-server/redis-sentinel), two raylets and a driver on the Sentinel address; 2,000 tasks and
10 actors in flight when the master is killed (SIGKILL). Prints the time from the kill until
the Sentinels name the new master, until the first task submitted after the kill returns, and
until every result is in; and whether every result is right (tasks, and every actor's calls
ran exactly once, in order) and the actors still answer.

    python scripts/bench_failover.py [--repeats 3] [--down-after-ms 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import rayr
from rayr.testing import Cluster
from rayr.testing_redis import SentinelSet, sentinel_set, server_binary

PASSWORD = "failover-pw"
TASKS = 2000
ACTORS = 10
CALLS = 20  # per actor


@rayr.remote(max_retries=3)
def square(i: int) -> int:
    time.sleep(0.002)
    return i * i


@rayr.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def value(self) -> int:
        return self.n


def one_run(sentinels: SentinelSet, kill_after_s: float = 0.3) -> dict[str, Any]:
    """One workload with the master killed ``kill_after_s`` into it; the measurements."""
    cluster = Cluster(sentinels.url, redis_password=PASSWORD, node_timeout_s=10.0)
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        rayr.init(address=sentinels.url, _redis_password=PASSWORD, _cluster_name=cluster.name,
                  log_to_driver=False)
        actors = [Counter.remote() for _ in range(ACTORS)]
        rayr.get([a.value.remote() for a in actors], timeout=120)
        refs = [square.remote(i) for i in range(TASKS)]
        calls = [[a.add.remote(1) for _ in range(CALLS)] for a in actors]
        time.sleep(kill_after_s)
        old = sentinels.current_master()
        victim = sentinels.master if sentinels.master.port == (old or (None, 0))[1] else sentinels.replica
        killed_at = time.monotonic()
        victim.kill()
        first = square.remote(-1)
        while sentinels.current_master() == old:  # Sentinel's part: down-after, vote, promotion
            time.sleep(0.01)
        promoted_s = time.monotonic() - killed_at
        assert rayr.get(first, timeout=300) == 1
        first_task_s = time.monotonic() - killed_at
        results = rayr.get(refs, timeout=300)
        counts = [rayr.get(c, timeout=300) for c in calls]
        all_in_s = time.monotonic() - killed_at
        after = rayr.get([a.add.remote(0) for a in actors], timeout=120)
        return {
            "promoted_s": promoted_s,
            "first_task_s": first_task_s,
            "all_results_s": all_in_s,
            "tasks_right": results == [i * i for i in range(TASKS)],
            "actor_calls_right": all(c == list(range(1, CALLS + 1)) for c in counts),
            "actors_answer": after == [CALLS] * ACTORS,
            "new_master": sentinels.current_master(),
            "old_master": old,
        }
    finally:
        rayr.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    args = parser.parse_args()
    binary, why = server_binary()
    if binary is None:
        raise SystemExit(why)
    runs = []
    for i in range(args.repeats):
        workdir = tempfile.mkdtemp(prefix="rayr-failover-")
        try:
            with sentinel_set(binary, workdir, password=PASSWORD, down_after_ms=args.down_after_ms) as found:
                run = one_run(found)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        runs.append(run)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in run.items()), flush=True)
    for key in ("promoted_s", "first_task_s", "all_results_s"):
        print(f"{key}: median {statistics.median(r[key] for r in runs):.2f} s "
              f"(min {min(r[key] for r in runs):.2f}, max {max(r[key] for r in runs):.2f}); "
              f"down-after-milliseconds {args.down_after_ms}, host {os.uname().nodename}")


if __name__ == "__main__":
    main()
