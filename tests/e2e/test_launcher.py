"""`rayr up / status / down` with the local provider, and the autoscaler scaling a real
cluster up under a burst and down after the idle timeout."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import psutil
import pytest

import rayr
from rayr import procs
from rayr.autoscaler.config import load_cluster_config
from rayr.autoscaler.sdk import request_resources
from rayr.gcs.client import connect
from rayr.keys import Keys
from rayr.testing import run_cli

CONFIG = """
cluster_name: {name}
max_workers: 2
idle_timeout_minutes: 0.05
autoscaler_interval_s: 0.3
provider:
  type: local
available_node_types:
  head:
    resources: {{CPU: 1}}
    max_workers: 0
  special_worker:
    resources: {{CPU: 1, special: 1}}
    min_workers: {min_workers}
    max_workers: 2
head_node_type: head
object_store:
  memory: 50000000
"""


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every live process whose command line names the test's temp dir (redis, monitor, raylets)."""
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and temp_dir in cmd:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def wait_gone(temp_dir: str, timeout: float = 15) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while (left := cluster_processes(temp_dir)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def write_config(tmp_path: Path, min_workers: int = 0) -> str:
    name = f"t{os.urandom(3).hex()}"
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG.format(name=name, min_workers=min_workers))
    return str(path)


def record(temp_dir: str, config: str) -> dict:
    from rayr.autoscaler.config import load_cluster_config

    name = load_cluster_config(config).cluster_name
    with open(os.path.join(temp_dir, "clusters", name, "cluster.json")) as f:
        return json.load(f)


def test_up_status_exec_idempotent_up_and_down_leave_nothing(sessions, tmp_path):
    temp_dir, env = sessions
    config = write_config(tmp_path, min_workers=1)
    try:
        out = run_cli("up", config, "--yes", env=env).stdout
        assert "is up at redis://127.0.0.1:" in out and "(2 node(s)" in out  # head + min_workers
        first = record(temp_dir, config)
        status = run_cli("status", env=env).stdout
        deadline = time.time() + 15
        while "1 special_worker" not in status and time.time() < deadline:
            time.sleep(0.5)  # the autoscaler publishes what it sees on its next round
            status = run_cli("status", env=env).stdout
        assert status.count(" 1 node_") == 2 and "1.0/2.0 special" not in status
        assert "0.0/1.0 special" in status and "Autoscaler:" in status and "1 special_worker" in status
        # exec runs on the head, connected to the cluster
        shown = run_cli("exec", config, f"{sys.executable} -m rayr.cli.main status --format json", env=env)
        assert json.loads(shown.stdout)["total"]["special"] == 1.0
        assert run_cli("get-head-ip", config, env=env).stdout.strip() == "127.0.0.1"

        # --no-restart leaves the running cluster alone
        out = run_cli("up", config, "--no-restart", env=env).stdout
        assert "left it running" in out and record(temp_dir, config) == first
        # without it, rayr restarts: a new head, the old processes gone, still one cluster
        run_cli("up", config, "--yes", env=env)
        second = record(temp_dir, config)
        assert second["redis_pid"] != first["redis_pid"]
        assert not any(procs.pid_running(p) for p in [first["redis_pid"], first["monitor_pid"]])
        assert psutil.pid_exists(second["redis_pid"])
        # a raylet's forked zygote and workers share its command line; they are named rayr-*
        raylets = [p for p in cluster_processes(temp_dir)
                   if "rayr.raylet" in " ".join(p.cmdline()) and not p.name().startswith("rayr-")]
        assert len(raylets) == 2  # one cluster: its head and its one min_workers node
    finally:
        down = run_cli("down", config, "--yes", env=env)
    assert "is down" in down.stdout
    assert wait_gone(temp_dir) == []
    assert not procs.pid_running(second["redis_pid"])  # redis renames itself: checked by pid
    assert not os.path.exists(os.path.join(temp_dir, "rayr_current_cluster"))
    assert "No cluster named" in run_cli("down", config, "--yes", env=env).stdout


def test_up_on_an_existing_redis_leaves_it_running_at_down(sessions, tmp_path, redis_url):
    """`redis: {address: ...}`: no Redis is started, the head, a min_workers node and a job
    run on the one given, under the file's cluster name; `down` stops rayr's processes only."""
    temp_dir, env = sessions
    config = write_config(tmp_path, min_workers=1)
    with open(config, "a") as f:
        f.write(f"redis:\n  address: {redis_url}\n")
    name = load_cluster_config(config).cluster_name
    try:
        out = run_cli("up", config, "--yes", env=env).stdout
        assert f"is up at {redis_url}" in out and "(2 node(s)" in out, out
        assert record(temp_dir, config)["redis_pid"] is None
        code = "import rayr; rayr.init(); print(rayr.get(rayr.remote(lambda: 6 * 7).remote()))"
        shown = run_cli("exec", config, f"{sys.executable} -c {shlex.quote(code)}", env=env)
        assert shown.stdout.split()[-1] == "42"
        client = connect(redis_url)
        try:
            assert client.scard(Keys(name).nodes) == 2  # keyed by the file's name
        finally:
            client.close()
    finally:
        down = run_cli("down", config, "--yes", env=env)
    assert "is down" in down.stdout
    assert wait_gone(temp_dir) == []
    client = connect(redis_url)
    try:
        assert client.ping()  # the Redis it was given still runs
    finally:
        client.close()


def test_autoscaler_scales_up_under_a_burst_and_down_when_idle(sessions, tmp_path):
    temp_dir, env = sessions
    config = write_config(tmp_path)

    def workers() -> list[dict]:
        return [n for n in rayr.nodes() if n["Alive"] and n["Resources"].get("special")]

    run_cli("up", config, "--yes", env=env)
    try:
        rayr.init()  # joins the cluster `up` recorded on this host
        try:
            assert workers() == []

            @rayr.remote(num_cpus=1, resources={"special": 1})
            def work(i: int) -> int:
                time.sleep(0.5)
                return i

            with pytest.warns(RuntimeWarning, match="no node in the cluster has that much"):
                refs = [work.remote(i) for i in range(8)]
            seen = 0
            deadline = time.time() + 60
            while seen < 2 and time.time() < deadline:
                seen = max(seen, len(workers()))
                time.sleep(0.1)
            assert seen == 2  # max_workers of the type
            assert sorted(rayr.get(refs, timeout=60)) == list(range(8))
            status = run_cli("status", env=env).stdout
            assert "launching 2 node(s) of type special_worker" in status

            # idle for 3 s (0.05 min): back to none
            deadline = time.time() + 30
            while workers() and time.time() < deadline:
                time.sleep(0.2)
            assert workers() == []
            assert "idle for more than 3s" in run_cli("status", env=env).stdout

            # request_resources launches at once and holds the node past the idle timeout
            request_resources(bundles=[{"special": 1}])
            deadline = time.time() + 30
            while not workers() and time.time() < deadline:
                time.sleep(0.1)
            assert len(workers()) == 1
            time.sleep(4)
            assert len(workers()) == 1
            request_resources()
            deadline = time.time() + 30
            while workers() and time.time() < deadline:
                time.sleep(0.2)
            assert workers() == []
        finally:
            rayr.shutdown()
    finally:
        run_cli("down", config, "--yes", env=env)
    assert wait_gone(temp_dir) == []


def test_a_bad_config_starts_nothing_and_names_the_field(sessions, tmp_path):
    temp_dir, env = sessions
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.format(name="bad", min_workers=3))
    out = run_cli("up", str(path), "--yes", env=env, check=False)
    assert out.returncode != 0
    assert "available_node_types.special_worker.max_workers: must be >= min_workers (3)" in out.stderr
    assert "max_workers: must be >= the sum of the worker types' min_workers (3)" in out.stderr
    assert cluster_processes(temp_dir) == []
    schema = json.loads(run_cli("up", "--print-schema", env=env).stdout)
    assert "available_node_types" in schema["properties"]
    assert "Give the cluster's YAML file" in run_cli("up", env=env, check=False).stderr
