"""The state API, task events, the timeline and `rayr list/summary/get`, on a real cluster.

Task events reach Redis in batches (every ``task_events_flush_s``), so tests wait for a state
to show up rather than expect it at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import rayr
from rayr import context
from rayr.gcs import task_events as tev
from rayr.testing import Cluster
from rayr.util import state
from rayr.util.state import RayStateApiException


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.1)


def gate_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)


@rayr.remote
def gated(path: str) -> str:
    gate_file(path)
    return "opened"


@rayr.remote
def plus_one(x: int) -> int:
    return x + 1


@rayr.remote
def echo(x: Any) -> Any:
    return x


@rayr.remote
def fails() -> None:
    raise ValueError("a value that is not allowed")


def tasks_named(name: str, **filters: str) -> list[state.TaskState]:
    job = context.state.core.job_id.hex()
    flt = [("job_id", "=", job), ("name", "=", name), *((k, "=", v) for k, v in filters.items())]
    return state.list_tasks(filters=flt, detail=True, limit=1000)


def test_states_seen_as_a_task_moves(ray, tmp_path):
    gate = str(tmp_path / "open")
    blocker = gated.remote(gate)
    waiting = echo.options(name="waits_for_gate").remote(blocker)
    (running,) = wait_for(lambda: tasks_named("gated", state="RUNNING"), "the gated task running")
    assert running.node_id in {n["NodeID"] for n in rayr.nodes()}
    assert running.worker_pid and running.worker_pid != os.getpid()
    assert running.type == "NORMAL_TASK" and running.func_or_class_name == "gated"
    (pending,) = wait_for(lambda: tasks_named("waits_for_gate", state="PENDING_ARGS_AVAIL"),
                          "the dependent task waiting for its argument")
    assert pending.node_id is None and pending.worker_pid is None
    assert pending.required_resources == {"CPU": 1.0}
    open(gate, "w").close()
    assert rayr.get(waiting) == "opened"
    done = wait_for(lambda: tasks_named("gated", state="FINISHED"), "the gated task finished")[0]
    states = [e["state"] for e in done.events]
    assert states[-3:] == ["SUBMITTED_TO_WORKER", "RUNNING", "FINISHED"]
    assert done.start_time_ms <= done.end_time_ms
    assert state.get_task(done.task_id).state == "FINISHED"


def test_a_failed_task_carries_its_error(ray):
    with pytest.raises(ValueError):
        rayr.get(fails.remote())
    (failed,) = wait_for(lambda: tasks_named("fails", state="FAILED"), "the failed task")
    assert failed.error_type == "ValueError"
    assert "not allowed" in failed.error_message


def test_a_cancelled_queued_task_shows_failed_without_running(ray, tmp_path):
    gate = str(tmp_path / "open")
    blockers = [gated.options(num_cpus=2).remote(gate)]
    queued = plus_one.options(name="cancelled_in_queue", num_cpus=2).remote(1)
    rayr.cancel(queued)
    with pytest.raises(rayr.exceptions.TaskCancelledError):
        rayr.get(queued, timeout=20)
    open(gate, "w").close()
    rayr.get(blockers)
    (task,) = wait_for(lambda: tasks_named("cancelled_in_queue", state="FAILED"), "the cancelled task")
    assert task.error_type == "TaskCancelledError" and task.worker_pid is None


@rayr.remote(max_restarts=1)
class Phoenix:
    def pid(self) -> int:
        return os.getpid()


def test_actors_listed_alive_restarting_dead(ray):
    actor = Phoenix.options(name="phoenix").remote()
    first_pid = rayr.get(actor.pid.remote())
    mine = wait_for(lambda: [a for a in state.list_actors(filters=[("name", "=", "phoenix")])
                             if a.state == "ALIVE"], "the actor alive")
    (info,) = mine
    assert info.class_name == "Phoenix" and info.pid == first_pid and info.num_restarts == 0
    os.kill(first_pid, signal.SIGKILL)
    second_pid = wait_for(lambda: _pid_after_restart(actor, first_pid), "the actor restarted")
    restarted = state.get_actor(info.actor_id)
    assert restarted.state == "ALIVE" and restarted.num_restarts == 1 and restarted.pid == second_pid
    rayr.kill(actor)
    dead = wait_for(lambda: (a := state.get_actor(info.actor_id)) and a.state == "DEAD" and a,
                    "the actor dead")
    assert dead.death_cause
    assert state.summarize_actors()["cluster"]["summary"]["Phoenix"]["state_counts"]["DEAD"] >= 1


def _pid_after_restart(actor: Any, old: int) -> int | None:
    try:
        pid = rayr.get(actor.pid.remote(), timeout=10)
    except (rayr.exceptions.RayActorError, rayr.exceptions.GetTimeoutError):
        return None
    return pid if pid != old else None


def test_objects_listed_with_size_and_reference_kind(ray):
    big = rayr.put(np.zeros(1 << 20, dtype=np.uint8))
    small = rayr.put("tiny")
    holder = rayr.put([small])  # a ref inside an object: captured
    objects = {o.object_id: o for o in state.list_objects(limit=10_000)}
    assert objects[big.hex()].storage == "OBJECT_STORE" and objects[big.hex()].object_size >= 1 << 20
    assert objects[big.hex()].node_id in {n["NodeID"] for n in rayr.nodes()}
    assert objects[small.hex()].storage == "INLINE"
    assert objects[small.hex()].reference_type == "CAPTURED_IN_OBJECT"
    assert objects[small.hex()].captured_in == [holder.hex()]
    assert objects[holder.hex()].reference_type == "LOCAL_REFERENCE"
    summary = state.summarize_objects()["cluster"]
    assert summary["total_objects"] >= 3 and summary["total_size_bytes"] >= 1 << 20


def test_nodes_jobs_workers_and_placement_groups(ray):
    nodes = state.list_nodes()
    assert [n.state for n in nodes if n.node_id == rayr.get_runtime_context().get_node_id()] == ["ALIVE"]
    job = context.state.core.job_id.hex()
    assert [j.status for j in state.list_jobs(filters=[("job_id", "=", job)])] == ["RUNNING"]
    rayr.get(plus_one.remote(1))
    drivers = wait_for(lambda: [w for w in state.list_workers(filters=[("worker_type", "=", "DRIVER")])
                                if w.pid == os.getpid()], "this driver among the workers")
    assert drivers[0].is_alive
    pg = rayr.util.placement_group([{"CPU": 1}], name="state_pg")
    rayr.get(pg.ready(), timeout=30)
    (listed,) = state.list_placement_groups(filters=[("name", "=", "state_pg")])
    assert listed.state == "CREATED" and listed.bundles[0]["unit_resources"] == {"CPU": 1}
    assert state.get_placement_group(listed.placement_group_id).name == "state_pg"
    rayr.util.remove_placement_group(pg)


def test_timeline_has_one_event_per_task(ray, tmp_path):
    refs = [plus_one.options(name="timeline_task").remote(i) for i in range(5)]
    rayr.get(refs)
    wait_for(lambda: len(tasks_named("timeline_task", state="FINISHED")) == 5, "five finished tasks")
    path = tmp_path / "trace.json"
    rayr.timeline(str(path))
    events = [e for e in json.loads(path.read_text()) if e["name"] == "timeline_task"]
    assert len(events) == 5
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["pid"].startswith("Node ") for e in events)
    assert {e["args"]["task_id"] for e in events} == {r.task_id().hex() for r in refs}


def test_bad_queries_say_what_would_be_right(ray):
    with pytest.raises(ValueError, match="valid keys: .*task_id"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="valid predicates"):
        state.list_actors(filters=[("state", "~", "ALIVE")])
    with pytest.raises(ValueError, match="32 hex"):
        state.get_task("not-an-id")
    assert state.get_task("00" * 16) is None
    assert state.get_actor("00" * 16) is None
    assert len(state.list_tasks(limit=2, raise_on_missing_output=False)) <= 2


def test_runtime_context_names_the_task_and_actor(ray):
    @rayr.remote
    def names() -> tuple[str | None, str | None]:
        ctx = rayr.get_runtime_context()
        return ctx.get_task_name(), ctx.get_task_function_name()

    name, function = rayr.get(names.options(name="custom").remote())
    assert name == "custom" and function.endswith("names")

    @rayr.remote
    class Named:
        def who(self) -> str | None:
            return rayr.get_runtime_context().get_actor_name()

    assert rayr.get(Named.options(name="the_named_one").remote().who.remote()) == "the_named_one"
    assert rayr.get_runtime_context().get_task_name() is None  # the driver runs no task


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAYR_ADDRESS": cluster.address, "RAYR_CLUSTER_NAME": cluster.name}
    return subprocess.run([sys.executable, "-m", "rayr.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_cli_lists_summarizes_and_gets(ray, cluster):
    refs = [plus_one.options(name="cli_task").remote(i) for i in range(3)]
    rayr.get(refs)
    wait_for(lambda: len(tasks_named("cli_task", state="FINISHED")) == 3, "three finished tasks")
    job = context.state.core.job_id.hex()
    out = _cli(cluster, "list", "tasks", "--filter", f"job_id={job}", "--filter", "name=cli_task",
               "--format", "json")
    assert out.returncode == 0, out.stderr
    assert sorted(t["task_id"] for t in json.loads(out.stdout)) == sorted(r.task_id().hex() for r in refs)
    table = _cli(cluster, "list", "nodes")
    assert table.returncode == 0 and "NODE_ID" in table.stdout and "ALIVE" in table.stdout
    summary = _cli(cluster, "summary", "tasks")
    assert summary.returncode == 0, summary.stderr
    (line,) = [row for row in summary.stdout.splitlines() if row.startswith("plus_one ")]
    assert "FINISHED: " in line and int(line.split()[1]) >= 3  # by function, as Ray's
    got = _cli(cluster, "get", "tasks", refs[0].task_id().hex(), "--format", "json")
    assert got.returncode == 0 and json.loads(got.stdout)["state"] == "FINISHED"
    missing = _cli(cluster, "get", "actors", "00" * 16)
    assert missing.returncode == 1 and "no actor with id" in missing.stderr
    bad = _cli(cluster, "list", "tasks", "--filter", "colour=red")
    assert bad.returncode == 1 and "valid keys" in bad.stderr


@rayr.remote
class Talker:
    def say(self, text: str) -> int:
        print(text, flush=True)
        return os.getpid()


@rayr.remote
def shout(text: str) -> int:
    print(text, flush=True)
    return os.getpid()


def test_logs_of_a_worker_an_actor_and_a_task_through_redis(ray, cluster):
    talker = Talker.remote()
    actor_pid = rayr.get(talker.say.remote("the actor speaks"))
    ref = shout.options(name="shouting").remote("the task shouts")
    task_pid = rayr.get(ref)
    listing = _cli(cluster, "logs")
    assert listing.returncode == 0, listing.stderr
    assert "worker-" in listing.stdout and str(actor_pid) in listing.stdout
    (actor,) = [a for a in state.list_actors(filters=[("class_name", "=", "Talker")]) if a.pid == actor_pid]
    by_actor = _cli(cluster, "logs", "actor", "--id", actor.actor_id)
    assert by_actor.returncode == 0 and "the actor speaks" in by_actor.stdout
    by_pid = _cli(cluster, "logs", "worker", "--pid", str(task_pid))
    assert by_pid.returncode == 0 and "the task shouts" in by_pid.stdout
    wait_for(lambda: tasks_named("shouting", state="FINISHED"), "the task's events")
    by_task = _cli(cluster, "logs", "task", "--id", ref.task_id().hex(), "--tail", "5")
    assert by_task.returncode == 0 and "the task shouts" in by_task.stdout
    missing = _cli(cluster, "logs", "actor", "--id", "00" * 16)
    assert missing.returncode == 1 and "no actor with id" in missing.stderr
    node = rayr.get_runtime_context().get_node_id()
    sneaky = _cli(cluster, "logs", "file", "../../etc/passwd", "--node-id", node)
    assert sneaky.returncode == 1 and "not a log file name" in sneaky.stderr


def test_logs_follow_prints_what_is_appended(ray, cluster):
    talker = Talker.remote()
    rayr.get(talker.say.remote("before following"))
    (actor,) = [a for a in state.list_actors(filters=[("class_name", "=", "Talker"), ("state", "=", "ALIVE")])
                if "before following" in _cli(cluster, "logs", "actor", "--id", a.actor_id).stdout]
    env = {**os.environ, "RAYR_ADDRESS": cluster.address, "RAYR_CLUSTER_NAME": cluster.name,
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "rayr.cli.main", "logs", "actor", "--id", actor.actor_id, "--follow"]
    follower = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout or []), daemon=True)
    try:
        reader.start()
        wait_for(lambda: any("before following" in line for line in seen), "the log so far")
        rayr.get(talker.say.remote("while following"))
        wait_for(lambda: any("while following" in line for line in seen), "the appended line")
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        reader.join(timeout=10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_with_events_off_nothing_is_recorded(redis_url, monkeypatch):
    rayr.shutdown()  # this module's driver: this test runs its own cluster
    monkeypatch.setenv("RAYR_TASK_EVENTS", "0")
    c = Cluster(redis_url, task_events=False)
    try:
        c.add_node(num_cpus=1)
        rayr.init(address=redis_url, _cluster_name=c.name)
        assert rayr.get([plus_one.remote(i) for i in range(20)]) == list(range(1, 21))
        actor = Phoenix.remote()
        rayr.get(actor.pid.remote())
        time.sleep(1.5)  # flushes would have happened by now
        core = context.state.core
        assert core.events is None
        job = core.job_id.hex()
        keys = core.gcs.keys
        assert not core.gcs.r.exists(keys.task_events_owner(job), keys.task_events_exec(job))
        assert state.list_tasks() == []
        assert [a.class_name for a in state.list_actors()] == ["Phoenix"]  # the GCS tables still answer
    finally:
        rayr.shutdown()
        c.shutdown()


def test_a_full_table_drops_and_says_so(redis_url, monkeypatch):
    rayr.shutdown()
    monkeypatch.setenv("RAYR_TASK_EVENTS_MAX_PER_JOB", "5")
    c = Cluster(redis_url, task_events_max_per_job=5)
    try:
        c.add_node(num_cpus=1)
        rayr.init(address=redis_url, _cluster_name=c.name)
        rayr.get([plus_one.remote(i) for i in range(20)])
        job = context.state.core.job_id.hex()
        wait_for(lambda: state.list_tasks(raise_on_missing_output=False, limit=100)
                 and tev.dropped_events(context.state.core.gcs, [job]),
                 "dropped events counted")
        assert len(state.list_tasks(raise_on_missing_output=False, limit=100)) <= 6
        with pytest.raises(RayStateApiException, match="dropped"):
            state.list_tasks()
    finally:
        rayr.shutdown()
        c.shutdown()


def test_a_multi_node_cluster_shows_where_each_task_ran(redis_url):
    rayr.shutdown()
    c = Cluster(redis_url)
    try:
        nodes = [c.add_node(num_cpus=1) for _ in range(3)]
        rayr.init(address=redis_url, _cluster_name=c.name)
        refs = [plus_one.options(name="spread_out", scheduling_strategy="SPREAD").remote(i) for i in range(6)]
        assert rayr.get(refs) == list(range(1, 7))
        done = wait_for(lambda: len(found := tasks_named("spread_out", state="FINISHED")) == 6 and found,
                        "six finished tasks")
        assert len({t.node_id for t in done}) >= 2 and {t.node_id for t in done} <= set(nodes)
        assert {n.node_id for n in state.list_nodes(filters=[("state", "=", "ALIVE")])} == set(nodes)
    finally:
        rayr.shutdown()
        c.shutdown()
