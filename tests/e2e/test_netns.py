"""A node in its own network namespace: nothing may rely on sharing loopback with the head."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rayr
from rayr.config import load_settings
from rayr.node import free_port
from rayr.session import read_session_file


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def netns(tmp_path):
    """A network namespace joined to this host by a veth pair: host 10.213.N.1, ns 10.213.N.2."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 to create a network namespace")
    suffix = os.urandom(3).hex()
    name, host_if, ns_if = f"rayr-{suffix}", f"rh{suffix}", f"rn{suffix}"
    net = int(suffix[:2], 16)
    if sh("ip", "netns", "add", name, check=False).returncode != 0:
        pytest.skip("ip netns is not permitted here")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"10.213.{net}.1/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"10.213.{net}.2/30", "dev", ns_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, f"10.213.{net}.1"
    finally:
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", host_if, check=False)


def test_node_in_another_network_namespace(netns, tmp_path, monkeypatch):
    name, head_ip = netns
    temp_dir = str(tmp_path / "rayr-sessions")
    env = {**os.environ, "RAYR_TEMP_DIR": temp_dir}
    env.pop("RAYR_ADDRESS", None)
    monkeypatch.setenv("RAYR_TEMP_DIR", temp_dir)
    port = free_port()
    cli = [sys.executable, "-m", "rayr.cli.main"]
    try:
        head = subprocess.run([*cli, "start", "--head", "--bind", "0.0.0.0", "--port", str(port),
                               "--num-cpus", "1"], capture_output=True, text=True, env=env, timeout=120)
        assert head.returncode == 0, head.stderr
        password = read_session_file(load_settings())["password"]  # never printed
        assert password and password not in head.stdout
        # the namespace's loopback is its own: it must reach the head over the veth address
        joined = subprocess.run(["ip", "netns", "exec", name, *cli, "start", "--address",
                                 f"{head_ip}:{port}", "--num-cpus", "1"],
                                capture_output=True, text=True, env={**env, "RAYR_REDIS_PASSWORD": password},
                                timeout=120)
        assert joined.returncode == 0, joined.stderr
        rayr.init(address=f"127.0.0.1:{port}", _redis_password=password)
        try:
            nodes = {n["NodeID"] for n in rayr.nodes() if n["Alive"]}
            assert len(nodes) == 2

            @rayr.remote
            def where():
                time.sleep(0.05)
                return rayr.get_runtime_context().get_node_id()

            spread = [where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]
            assert set(rayr.get(spread)) == nodes

            @rayr.remote
            def make():
                return np.arange(3_000_000, dtype=np.int64), rayr.get_runtime_context().get_node_id()

            from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            far_node = next(n for n in nodes if n != rayr.get_runtime_context().get_node_id())
            arr, made_on = rayr.get(make.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(far_node, soft=False)).remote())
            assert made_on == far_node
            assert np.array_equal(arr, np.arange(3_000_000, dtype=np.int64))
        finally:
            rayr.shutdown()
    finally:
        subprocess.run([*cli, "stop"], capture_output=True, env=env, timeout=120)


def test_nodes_report_their_own_addresses_and_a_blocking_node_stops_on_sigterm(netns, tmp_path, monkeypatch):
    """Two nodes in separate namespaces: the head (--node-ip-address given) and a node whose
    address is found from its route to Redis, started with --block as a container's main
    process is; SIGTERM stops it."""
    name, head_ip = netns
    node_ip = head_ip[:-1] + "2"
    temp_dir = str(tmp_path / "rayr-sessions")
    env = {k: v for k, v in os.environ.items() if k not in ("RAYR_ADDRESS", "RAYR_REDIS_PASSWORD")}
    env["RAYR_TEMP_DIR"] = temp_dir
    monkeypatch.setenv("RAYR_TEMP_DIR", temp_dir)
    port = free_port()
    cli = [sys.executable, "-m", "rayr.cli.main"]
    blocking = None
    try:
        args = ["start", "--head", "--bind", "0.0.0.0", "--port", str(port), "--num-cpus", "1"]
        head = subprocess.run([*cli, *args,
                               "--node-ip-address", head_ip], capture_output=True, text=True, env=env,
                              timeout=120)
        assert head.returncode == 0, head.stderr
        assert f"started on {head_ip}" in head.stdout
        password = read_session_file(load_settings())["password"]
        blocking = subprocess.Popen(
            ["ip", "netns", "exec", name, *cli, "start", "--address", f"{head_ip}:{port}", "--num-cpus", "1",
             "--block", "--temp-dir", str(tmp_path / "ns-sessions")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "RAYR_REDIS_PASSWORD": password})
        rayr.init(address=f"127.0.0.1:{port}", _redis_password=password)
        try:
            deadline = time.monotonic() + 120
            while len([n for n in rayr.nodes() if n["Alive"]]) < 2:
                assert blocking.poll() is None, blocking.communicate()
                assert time.monotonic() < deadline, "the namespace's node did not join"
                time.sleep(0.1)
            hosts = {n["NodeManagerAddress"]: n["NodeID"] for n in rayr.nodes() if n["Alive"]}
            assert set(hosts) == {head_ip, node_ip}, hosts

            @rayr.remote
            def where():
                return rayr.get_runtime_context().get_node_id()

            # node:<ip> reaches the node by its address, as in Ray
            there = where.options(resources={f"node:{node_ip}": 0.01}).remote()
            assert rayr.get(there, timeout=60) == hosts[node_ip]
            blocking.send_signal(signal.SIGTERM)
            out, err = blocking.communicate(timeout=120)
            assert blocking.returncode == 0, out + err
            assert "Stopped 1 rayr process(es)" in out
            deadline = time.monotonic() + 60
            while any(n["NodeID"] == hosts[node_ip] and n["Alive"] for n in rayr.nodes()):
                assert time.monotonic() < deadline, "the stopped node is still alive"
                time.sleep(0.1)
        finally:
            rayr.shutdown()
    finally:
        if blocking is not None and blocking.poll() is None:
            blocking.kill()
            blocking.wait()
        subprocess.run([*cli, "stop"], capture_output=True, env=env, timeout=120)
