"""`rayr start / status / stop` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

import rayr
from rayr.node import free_port


def run_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "rayr.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_start_status_join_stop(tmp_path, monkeypatch):
    temp_dir = str(tmp_path / "rayr")
    env = {**os.environ, "RAYR_TEMP_DIR": temp_dir}
    env.pop("RAYR_ADDRESS", None)
    monkeypatch.setenv("RAYR_TEMP_DIR", temp_dir)
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    port = free_port()
    try:
        started = run_cli("start", "--head", "--port", str(port), "--num-cpus", "1",
                          "--resources", '{"special": 2}', env=env)
        assert f"127.0.0.1:{port}" in started.stdout
        run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", env=env)
        status = run_cli("status", env=env).stdout
        assert "Active:" in status and status.count(" 1 node_") == 2
        assert "0.0/3.0 CPU" in status and "0.0/2.0 special" in status
        data = json.loads(run_cli("status", "--format", "json", env=env).stdout)
        assert data["total"]["CPU"] == 3.0 and len(data["active"]) == 2

        # a driver with no address joins the recorded cluster instead of starting one
        rayr.init()
        try:
            assert len(rayr.nodes()) == 2
            assert rayr.cluster_resources()["CPU"] == 3.0

            @rayr.remote(num_cpus=0, resources={"special": 1})
            def where():
                return rayr.get_runtime_context().get_node_id()

            assert rayr.get(where.remote()) in {n["NodeID"] for n in rayr.nodes()}
        finally:
            rayr.shutdown()
    finally:
        records = []
        started_dir = os.path.join(temp_dir, "started")
        if os.path.isdir(started_dir):
            for name in os.listdir(started_dir):
                with open(os.path.join(started_dir, name)) as f:
                    records.append(json.load(f))
        stopped = run_cli("stop", env=env)
    pids = [pid for r in records for pid in r["pids"]]
    assert len(pids) == 4  # redis, monitor, two raylets
    assert "Stopped 4" in stopped.stdout
    deadline = time.time() + 10
    while any(psutil.pid_exists(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not os.path.exists(os.path.join(temp_dir, "rayr_current_cluster"))


def test_status_unreachable_exits_nonzero(tmp_path):
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path)}
    out = run_cli("status", "--address", f"127.0.0.1:{free_port()}", env=env, check=False)
    assert out.returncode != 0
    assert "Cannot reach" in out.stderr
    out = run_cli("status", env={k: v for k, v in env.items() if k != "RAYR_ADDRESS"}, check=False)
    assert out.returncode != 0 and "rayr start --head" in out.stderr


def test_start_needs_head_or_address(tmp_path):
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path)}
    out = run_cli("start", env=env, check=False)
    assert out.returncode != 0 and "--head" in out.stderr
