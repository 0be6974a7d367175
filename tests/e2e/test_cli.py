"""`rayr start / status / stop` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import redis

import rayr
from rayr import procs
from rayr.node import free_port
from rayr.testing import run_cli


def test_start_status_join_stop(sessions):
    temp_dir, env = sessions
    port = free_port()
    try:
        started = run_cli("start", "--head", "--port", str(port), "--num-cpus", "1",
                          "--resources", '{"special": 2}', env=env)
        assert f"127.0.0.1:{port}" in started.stdout
        # the head serves a dashboard (8265, or the next free port) and says where
        dashboard = re.search(r"Dashboard: +(http://127\.0\.0\.1:\d+)", started.stdout)
        assert dashboard, started.stdout
        version = json.loads(urllib.request.urlopen(dashboard[1] + "/api/version", timeout=30).read())
        assert version["url"] == dashboard[1]
        run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", env=env)
        status = run_cli("status", env=env).stdout
        assert "Active:" in status and status.count(" 1 node_") == 2
        assert f"Dashboard:\n {dashboard[1]}\n" in status
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
    assert len(pids) == 6  # redis, monitor, dashboard, job supervisor, two raylets
    assert "Stopped 6" in stopped.stdout
    deadline = time.time() + 10
    while any(procs.pid_running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(procs.pid_running(p) for p in pids)
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


MIXED = """
import hashlib, sys
import numpy as np
import rayr

rayr.init()
nodes = [n["NodeID"] for n in rayr.nodes() if n["Alive"]]
assert len(nodes) == 3, nodes

@rayr.remote
def where(x):
    return x, rayr.get_runtime_context().get_node_id()

@rayr.remote
def digest(arr):
    return hashlib.sha256(arr.tobytes()).hexdigest(), rayr.get_runtime_context().get_node_id()

@rayr.remote
class Counter:
    def __init__(self):
        self.n = 0
    def inc(self):
        self.n += 1
        return self.n

results = rayr.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(30)])
assert [x for x, _ in results] == list(range(30))
assert {n for _, n in results} == set(nodes)
data = np.random.default_rng(1).integers(0, 255, size=100_000_000, dtype=np.uint8)
expected = hashlib.sha256(data.tobytes()).hexdigest()
ref = rayr.put(data)
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
far = [digest.options(scheduling_strategy=On(n, soft=False)).remote(ref) for n in nodes]
assert sorted(rayr.get(far)) == sorted((expected, n) for n in nodes)
counters = [Counter.options(scheduling_strategy=On(n, soft=False)).remote() for n in nodes]
assert rayr.get([c.inc.remote() for c in counters for _ in range(2)]) == [1, 2, 1, 2, 1, 2]
rayr.shutdown()
print("mixed-ok")
"""


def test_three_node_cluster_from_the_cli_runs_a_mixed_workload(sessions, tmp_path):
    _temp_dir, env = sessions
    port = free_port()
    try:
        head = run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--redis-persist", env=env)
        assert "start it again with:" in head.stdout  # how to bring a stopped Redis back
        with open(os.path.join(_temp_dir, "rayr_current_cluster")) as f:
            password = json.load(f)["password"]  # generated: every head has one
        probe = redis.Redis(port=port, password=password)
        assert probe.config_get("appendonly")["appendonly"] == "yes"
        probe.close()
        for _ in range(2):
            run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", env=env)
        status = run_cli("status", env=env).stdout
        assert status.count(" 1 node_") == 3 and "0.0/3.0 CPU" in status
        script = tmp_path / "mixed.py"
        script.write_text(MIXED)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "mixed-ok" in out.stdout
    finally:
        stopped = run_cli("stop", env=env)
    assert "Stopped 7" in stopped.stdout  # redis, monitor, dashboard, job supervisor, three raylets


def test_memory_shows_store_use_and_objects(sessions):
    temp_dir, env = sessions
    port = free_port()
    try:
        run_cli("start", "--head", "--port", str(port), "--num-cpus", "1",
                "--object-store-memory", str(300_000_000), env=env)
        rayr.init()
        try:
            import numpy as np

            big = rayr.put(np.zeros(2_000_000, dtype=np.uint8))
            small = rayr.put("tiny")
            box = rayr.put([big])  # `big` is now also captured inside `box`
            deadline = time.time() + 5
            data = {}
            while time.time() < deadline:  # store usage is published with the heartbeat
                data = json.loads(run_cli("memory", "--format", "json", env=env).stdout)
                if data["nodes"] and data["nodes"][0]["objects"] >= 1:
                    break
                time.sleep(0.2)
            node = data["nodes"][0]
            assert node["capacity"] == 300_000_000 and node["used_bytes"] >= 2_000_000
            by_id = {o["object_id"]: o for o in data["objects"]}
            assert by_id[big.hex()]["kind"] == "store" and by_id[big.hex()]["size"] >= 2_000_000
            assert by_id[small.hex()]["kind"] == "inline"
            assert by_id[big.hex()]["refs"]["captured_in"] == [box.hex()]
            assert by_id[small.hex()]["refs"] == {"borrowers": 0, "captured_in": []}
            text = run_cli("memory", env=env).stdout
            assert "Object store memory" in text and big.hex() in text
            assert "captured in 1 object(s)" in text
        finally:
            rayr.shutdown()
    finally:
        run_cli("stop", env=env)
