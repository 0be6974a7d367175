"""init/shutdown lifecycle: embedded clusters, joining, fate sharing, bad addresses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

import rayr
from rayr.testing import Cluster


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.time() + timeout
    while _alive(pids) and time.time() < deadline:
        time.sleep(0.05)
    return _alive(pids)


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """Isolate session files: no cluster recorded by `rayr start` is visible."""
    monkeypatch.setenv("RAYR_TEMP_DIR", str(tmp_path / "rayr-sessions"))
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    return tmp_path / "rayr-sessions"


def test_embedded_cluster_starts_and_stops_cleanly(temp_dir):
    before_shm = set(os.listdir("/dev/shm"))
    rayr.init(num_cpus=2)
    try:
        assert rayr.is_initialized()
        from rayr.context import state

        cluster = state.cluster
        assert cluster is not None
        session_dir = cluster.session_dir
        assert os.path.isdir(session_dir)

        @rayr.remote
        def pid():
            return os.getpid()

        worker_pid = rayr.get(pid.remote())
        big = rayr.put(b"x" * 1_000_000)
        assert set(os.listdir("/dev/shm")) - before_shm, "a large put should use shared memory"
        del big
        pids = cluster.pids() + [worker_pid]
        assert len(_alive(pids)) == len(pids)
        assert rayr.cluster_resources()["CPU"] == 2.0
    finally:
        rayr.shutdown()
    assert not rayr.is_initialized()
    assert _wait_gone(pids) == []
    assert set(os.listdir("/dev/shm")) - before_shm == set()
    assert not os.path.exists(session_dir)


def test_init_starts_a_dashboard_unless_told_not_to(temp_dir, capfd):
    context = rayr.init(num_cpus=1)
    try:
        url = context.dashboard_url
        assert url.startswith("http://127.0.0.1:")
        assert f"View the dashboard at {url}" in capfd.readouterr().err
        assert _get_json(url + "/api/version")["url"] == url
    finally:
        rayr.shutdown()
    context = rayr.init(num_cpus=1, include_dashboard=False)
    try:
        assert context.dashboard_url == ""
        from rayr.context import state

        assert state.cluster is not None and state.cluster.dashboard_proc is None
        assert "dashboard" not in capfd.readouterr().err
    finally:
        rayr.shutdown()


def test_second_init_raises_unless_ignored(temp_dir):
    rayr.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            rayr.init(num_cpus=1)
        ctx = rayr.init(ignore_reinit_error=True)
        assert ctx["node_id"] == rayr.get_runtime_context().get_node_id()
    finally:
        rayr.shutdown()
    rayr.shutdown()  # idempotent


DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import rayr
    rayr.init(num_cpus=1)

    @rayr.remote
    def pid():
        return os.getpid()

    from rayr.context import state
    pids = state.cluster.pids() + [rayr.get(pid.remote())]
    ref = rayr.put(b"y" * 1_000_000)
    print(" ".join(map(str, pids)), flush=True)
    print(state.cluster.session_dir, flush=True)
    {tail}
    """
)


def _run_driver(tail: str, env: dict[str, str]) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tail=tail)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "driver printed nothing"
    proc.stdout.readline()
    return proc, [int(p) for p in line.split()]


def test_fate_sharing_when_driver_is_sigkilled(temp_dir):
    env = {**os.environ, "RAYR_TEMP_DIR": str(temp_dir)}
    before_shm = set(os.listdir("/dev/shm"))
    proc, pids = _run_driver("time.sleep(60)", env)
    assert len(_alive(pids)) == len(pids) >= 4  # redis, monitor, raylet, worker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert _wait_gone(pids) == [], "cluster processes outlived a SIGKILLed driver"
    deadline = time.time() + 5
    while set(os.listdir("/dev/shm")) - before_shm and time.time() < deadline:
        time.sleep(0.05)
    assert set(os.listdir("/dev/shm")) - before_shm == set()


def test_a_driver_whose_node_dies_is_told_so_in_get(temp_dir):
    """The embedded raylet dies under a running task: get() says so (once the node is declared
    dead) instead of waiting for good, and what already arrived is still there."""
    ours = psutil.Process()
    before = {p.pid for p in ours.children(recursive=True)}
    rayr.init(num_cpus=1)
    try:
        raylet = next(p for p in ours.children(recursive=True)
                      if p.pid not in before and p.name() == "rayr-raylet")
        kept = rayr.put(1)
        gate = str(temp_dir.parent / "never-made")

        @rayr.remote
        def waits_for(path: str) -> None:
            while not os.path.exists(path):
                time.sleep(0.05)

        ref = waits_for.remote(gate)
        raylet.kill()
        with pytest.raises(rayr.exceptions.LocalRayletDiedError, match=r"attached to \(\w+\) died"):
            rayr.get(ref, timeout=120)
        assert rayr.get(kept) == 1
    finally:
        rayr.shutdown()


def test_cluster_stops_at_interpreter_exit(temp_dir):
    env = {**os.environ, "RAYR_TEMP_DIR": str(temp_dir)}
    proc, pids = _run_driver("sys.exit(0)", env)
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()
    assert _wait_gone(pids) == []


def test_auto_init_on_first_use(temp_dir):
    code = "import rayr\nprint(rayr.get(rayr.put(21)) * 2)\nprint(rayr.is_initialized())"
    env = {**os.environ, "RAYR_TEMP_DIR": str(temp_dir)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "True"]


def test_join_by_address_forms(redis_url, temp_dir, monkeypatch):
    c = Cluster(redis_url)
    node = c.add_node(num_cpus=1)
    try:
        host_port = redis_url.removeprefix("redis://")
        for address in (redis_url, host_port):
            rayr.init(address=address, _cluster_name=c.name)
            assert rayr.get_runtime_context().get_node_id() == node
            assert rayr.is_initialized()
            rayr.shutdown()
        # RAYR_ADDRESS is used by init() and by init(address="auto")
        monkeypatch.setenv("RAYR_ADDRESS", redis_url)
        for address in (None, "auto"):
            rayr.init(address=address, _cluster_name=c.name)
            assert rayr.get_runtime_context().get_node_id() == node
            rayr.shutdown()
        assert _alive(c.pids()) == c.pids(), "joining drivers must not stop the cluster"
        with pytest.raises(ValueError, match="existing cluster"):
            rayr.init(address=redis_url, num_cpus=3, _cluster_name=c.name)
    finally:
        rayr.shutdown()
        c.shutdown()


def test_auto_without_a_cluster_says_where_it_looked(temp_dir):
    with pytest.raises(ConnectionError, match="RAYR_ADDRESS") as info:
        rayr.init(address="auto")
    assert "rayr start --head" in str(info.value)
    assert not rayr.is_initialized()


def test_unreachable_address(temp_dir):
    from rayr.node import free_port

    with pytest.raises(ConnectionError, match="rayr start --head"):
        rayr.init(address=f"127.0.0.1:{free_port()}")
    assert not rayr.is_initialized()


def test_malformed_address(temp_dir):
    with pytest.raises(ValueError, match="host:port"):
        rayr.init(address="http://example")
    with pytest.raises(ValueError, match="port"):
        rayr.init(address="justahost")


def test_unknown_backend_suggests(temp_dir):
    with pytest.raises(ValueError, match="Did you mean 'shm'"):
        rayr.init(object_store_backend="shmm")


def test_bad_setting_from_environment_names_it(temp_dir, monkeypatch):
    monkeypatch.setenv("RAYR_INLINE_THRESHOLD", "-5")
    with pytest.raises(ValueError, match="inline_threshold"):
        rayr.init()


def test_cluster_queries(ray):
    total = rayr.cluster_resources()
    assert total["CPU"] == 2.0 and total["custom"] == 2.0
    assert total["object_store_memory"] > 0 and total["memory"] > 0
    assert any(k.startswith("node:") for k in total)
    deadline = time.time() + 5
    while rayr.available_resources().get("CPU") != 2.0 and time.time() < deadline:
        time.sleep(0.1)
    assert rayr.available_resources()["CPU"] == 2.0
    (node,) = rayr.nodes()
    assert node["Alive"] is True and node["NodeID"] == rayr.get_runtime_context().get_node_id()
    for key in ("NodeManagerAddress", "NodeManagerHostname", "Resources", "alive"):
        assert key in node
    assert node["Resources"]["CPU"] == 2.0


def test_available_resources_reflect_running_tasks(ray):
    @rayr.remote(num_cpus=2)
    def hold():
        time.sleep(2.5)

    ref = hold.remote()
    deadline = time.time() + 3
    while rayr.available_resources().get("CPU", 0) > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert rayr.available_resources().get("CPU", 0) == 0
    rayr.get(ref)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


LOGGING_DRIVER = """
import json, logging, sys, warnings
import rayr
warnings.simplefilter("always")
rayr.init(num_cpus=1, include_dashboard=False, logging_config=rayr.LoggingConfig(encoding="JSON"),
          logging_level="DEBUG", logging_format="driver-format %(levelname)s %(message)s",
          _system_config={"object_timeout_milliseconds": 100})

@rayr.remote
def work():
    logging.getLogger("app").info("hello from a task")
    return rayr.get_runtime_context().get_task_id()

task_id = rayr.get(work.remote())
logging.getLogger("rayr.test").debug("driver debug line")
print("TASK", task_id, flush=True)
rayr.shutdown()
"""


def test_logging_options_reach_driver_and_workers(temp_dir):
    env = {**os.environ, "RAYR_TEMP_DIR": str(temp_dir)}
    out = subprocess.run([sys.executable, "-c", LOGGING_DRIVER], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    task_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("TASK"))
    both = out.stdout + out.stderr
    # the worker's root logger writes one JSON object per record, naming the task
    records = [json.loads(line[line.index("{"):]) for line in both.splitlines()
               if "hello from a task" in line and "{" in line]
    assert records and records[0]["message"] == "hello from a task"
    assert records[0]["task_id"] == task_id and records[0]["levelname"] == "INFO"
    # the driver's rayr logger uses logging_format at logging_level
    assert "driver-format DEBUG driver debug line" in out.stderr
    assert "_system_config" in out.stderr and "object_timeout_milliseconds" in out.stderr
