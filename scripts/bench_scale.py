"""Where one Redis saturates: Redis CPU and memory per task, per actor call, per queued task,
per actor and per node (real raylets and simulated ones), and what that extrapolates to.

Every figure is a delta of the server's own counters (``INFO``: the main thread's CPU,
``used_memory``, commands processed) around one workload, on a cluster this script starts
(``rayr.init``). Simulated nodes speak to Redis through rayr's own client code (``GcsClient``:
``register_node``, ``heartbeat``, and the raylet's blocking reads of its node stream and the
task streams), so the monitor watches them like real ones. Results print as a table and, with
``--json``, as JSON.

    python scripts/bench_scale.py                      # the default envelope (a few minutes)
    python scripts/bench_scale.py --queued 1000000     # the 1M queued tasks figure
    python scripts/bench_scale.py --quick              # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

import rayr
from rayr import context
from rayr.testing import SimulatedNodes


def redis_counters(r: Any) -> dict[str, float]:
    info = r.info()
    cpu = info.get("used_cpu_sys_main_thread", info["used_cpu_sys"]) + info.get(
        "used_cpu_user_main_thread", info["used_cpu_user"])
    return {"cpu_s": float(cpu), "memory": float(info["used_memory"]),
            "commands": float(info["total_commands_processed"]), "keys": float(r.dbsize())}


def measure(r: Any, work: Callable[[], Any]) -> tuple[dict[str, float], float, Any]:
    """(Redis counter deltas, wall seconds, what ``work`` returned)."""
    before = redis_counters(r)
    start = time.perf_counter()
    out = work()
    wall = time.perf_counter() - start
    after = redis_counters(r)
    return {k: after[k] - before[k] for k in before}, wall, out


def idle(r: Any, seconds: float) -> dict[str, float]:
    delta, _, _ = measure(r, lambda: time.sleep(seconds))
    return {k: v / seconds for k, v in delta.items()}


def settle(r: Any, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until the last workload's frees and exits are over (Redis sees only the idle
    cluster's traffic for ``quiet_s``), so the next delta is the next workload's alone."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = redis_counters(r)
        time.sleep(quiet_s)
        after = redis_counters(r)
        if after["keys"] == before["keys"] and abs(after["memory"] - before["memory"]) < 64 * 1024:
            return


def uss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_full_info().uss
    except (psutil.Error, OSError):
        return 0


@rayr.remote
def noop() -> None:
    return None


@rayr.remote(num_cpus=0)
class Tiny:
    def ping(self) -> int:
        return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--queued", type=int, default=100_000,
                        help="tasks left queued (needing a resource no node has yet)")
    parser.add_argument("--actors", type=int, default=200)
    parser.add_argument("--real-nodes", type=int, default=6, help="extra real raylets, idle")
    parser.add_argument("--sim-nodes", type=int, default=250)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    if opts.quick:
        opts.tasks, opts.calls, opts.queued, opts.actors = 500, 500, 2_000, 5
        opts.real_nodes, opts.sim_nodes, opts.idle_s = 1, 10, 1.0
    rayr.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    core = context.state.core
    cluster = context.state.cluster
    assert core is not None and cluster is not None
    r = core.gcs.r
    settings = core.settings
    rows: dict[str, Any] = {"machine": f"{socket.gethostname()}, {os.cpu_count()} cores",
                            "redis": r.info().get("redis_version")}
    rayr.get([noop.remote() for _ in range(200)])  # warm workers

    rows["idle_1_node_per_s"] = idle(r, opts.idle_s)

    delta, wall, _ = measure(r, lambda: rayr.get([noop.remote() for _ in range(opts.tasks)]))
    rows["task"] = {"redis_cpu_us": delta["cpu_s"] / opts.tasks * 1e6,
                    "commands": delta["commands"] / opts.tasks, "rate_per_s": opts.tasks / wall}

    actor = Tiny.remote()
    rayr.get(actor.ping.remote())
    delta, wall, _ = measure(r, lambda: rayr.get([actor.ping.remote() for _ in range(opts.calls)]))
    rows["actor_call"] = {"redis_cpu_us": delta["cpu_s"] / opts.calls * 1e6,
                          "commands": delta["commands"] / opts.calls, "rate_per_s": opts.calls / wall}
    rayr.kill(actor)

    # queued: tasks needing a resource no node has yet
    driver = psutil.Process()
    rss0 = driver.memory_info().rss
    waiting = noop.options(num_cpus=0, resources={"later": 0.001})
    delta, wall, refs = measure(r, lambda: [waiting.remote() for _ in range(opts.queued)])
    rss1 = driver.memory_info().rss
    rows["queued_task"] = {"redis_bytes": delta["memory"] / opts.queued,
                           "driver_bytes": (rss1 - rss0) / opts.queued,
                           "redis_cpu_us": delta["cpu_s"] / opts.queued * 1e6,
                           "submit_per_s": opts.queued / wall}
    start = time.perf_counter()
    cluster.add_node(num_cpus=2, resources={"later": 1000.0})
    rayr.get(refs)
    rows["queued_task"]["drain_s"] = time.perf_counter() - start
    del refs
    settle(r)

    # actors: a process per actor
    def create_actors() -> list[Any]:
        made = [Tiny.remote() for _ in range(opts.actors)]
        rayr.get([a.ping.remote() for a in made])
        return made

    delta, wall, actors = measure(r, create_actors)
    # this driver's cluster only: its processes descend from this one
    workers = [p for p in psutil.Process().children(recursive=True)
               if "rayr-worker" in p.name() or "rayr.worker" in " ".join(p.cmdline())]
    mem = sorted(uss(p.pid) for p in workers)
    rows["actor"] = {"redis_bytes": delta["memory"] / opts.actors, "redis_keys": delta["keys"] / opts.actors,
                     "create_per_s": opts.actors / wall, "workers_seen": len(mem),
                     "worker_uss_median": mem[len(mem) // 2] if mem else 0}
    for a in actors:
        rayr.kill(a)
    del actors
    settle(r)

    # real idle raylets
    settle(r)
    base = idle(r, opts.idle_s)
    for _ in range(opts.real_nodes):
        cluster.add_node(num_cpus=1)
    more = idle(r, opts.idle_s)
    rows["real_node_per_s"] = {k: (more[k] - base[k]) / opts.real_nodes for k in ("cpu_s", "commands")}

    # simulated raylets
    sims = SimulatedNodes(cluster.redis_url, settings.redis_password, settings.cluster_name, opts.sim_nodes,
                    settings.heartbeat_interval_s, settings.node_timeout_s)
    mem0 = redis_counters(r)["memory"]
    base = idle(r, opts.idle_s)
    sims.start()
    time.sleep(1.0)
    loaded = idle(r, opts.idle_s)
    rows["sim_node_per_s"] = {k: (loaded[k] - base[k]) / opts.sim_nodes for k in ("cpu_s", "commands")}
    rows["sim_node_per_s"]["redis_bytes"] = (redis_counters(r)["memory"] - mem0) / opts.sim_nodes
    rows["sim_nodes"] = opts.sim_nodes
    sims.close()

    # one Redis thread saturates at 1 CPU second per second
    node_cpu = max(rows["sim_node_per_s"]["cpu_s"], rows["real_node_per_s"]["cpu_s"], 1e-9)
    rows["saturation"] = {
        "tasks_per_s": 1e6 / rows["task"]["redis_cpu_us"],
        "actor_calls_per_s": 1e6 / rows["actor_call"]["redis_cpu_us"],
        "idle_nodes": 1.0 / node_cpu,
        "queued_tasks_per_gib": 2**30 / max(rows["queued_task"]["redis_bytes"], 1),
    }
    rayr.shutdown()
    if opts.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"machine: {rows['machine']}; Redis {rows['redis']}")
    print(f"idle, 1 node:          Redis CPU {rows['idle_1_node_per_s']['cpu_s'] * 100:.2f}% of a core, "
          f"{rows['idle_1_node_per_s']['commands']:.0f} commands/s")
    for name in ("task", "actor_call"):
        row = rows[name]
        print(f"per {name:<16} Redis CPU {row['redis_cpu_us']:.1f} us, {row['commands']:.1f} commands "
              f"({row['rate_per_s']:.0f}/s here)")
    q = rows["queued_task"]
    print(f"per queued task:       Redis {q['redis_bytes']:.0f} B, driver {q['driver_bytes']:.0f} B, "
          f"submit {q['submit_per_s']:.0f}/s, drain {q['drain_s']:.1f} s")
    a = rows["actor"]
    print(f"per actor:             Redis {a['redis_bytes']:.0f} B, {a['redis_keys']:.1f} keys, worker USS "
          f"{a['worker_uss_median'] / 2**20:.1f} MiB, {a['create_per_s']:.0f} created/s")
    for name in ("real_node_per_s", "sim_node_per_s"):
        row = rows[name]
        print(f"per {name[:-6]} node (idle): Redis CPU {row['cpu_s'] * 100:.3f}% of a core, "
              f"{row['commands']:.1f} commands/s")
    print(f"per simulated node:    Redis {rows['sim_node_per_s']['redis_bytes']:.0f} B")
    s = rows["saturation"]
    print(f"one Redis thread saturates at ~{s['tasks_per_s']:.0f} tasks/s, ~{s['actor_calls_per_s']:.0f} "
          f"actor calls/s, ~{s['idle_nodes']:.0f} idle nodes; ~{s['queued_tasks_per_gib']:.0f} queued "
          "tasks per GiB of Redis")


if __name__ == "__main__":
    main()
