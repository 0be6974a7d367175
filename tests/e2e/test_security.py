"""Security on a shared host: other users can neither reach a cluster's Redis nor read its
files, the password never shows on a command line, and `rayr stop` stops only its own processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import redis

import rayr
from rayr import procs
from rayr.job_submission import JobStatus, JobSubmissionClient
from rayr.node import free_port, start_redis
from rayr.testing import run_cli

# the system's interpreter: ours may live where uid nobody may not go (/root/.pyenv)
NOBODY_PYTHON = "/usr/bin/python3"
as_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(NOBODY_PYTHON),
                             reason="switching to uid nobody needs root (and /usr/bin/python3)")

# what another local user runs: raw RESP on the cluster's port, no rayr, no password
RAW_REDIS = r"""
import socket, sys
out = []
for command in (b"PING", b"SET rayr:{default}:x 1", b"XADD rayr:{default}:tasks:shape:CPU=1 * s x"):
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as sock:
        sock.sendall(command + b"\r\n")
        out.append(sock.recv(200).decode().strip())
print("\n".join(out))
"""


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    """Run python ``args`` as uid nobody (isolated: it reads nothing of ours)."""
    return subprocess.run([NOBODY_PYTHON, "-I", "-S", *args], user="nobody", group="nogroup",
                          capture_output=True, text=True, timeout=60, cwd="/")


def assert_refused(port: int) -> None:
    done = as_nobody("-c", RAW_REDIS, str(port))
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 3 and all(r.startswith("-NOAUTH") for r in replies), replies


@pytest.fixture
def shared_temp(monkeypatch) -> Iterator[tuple[str, dict[str, str]]]:
    """RAYR_TEMP_DIR inside a directory every user may enter (as /tmp is), so that only the
    modes rayr gives its own files keep others out; rayr creates the temp dir itself."""
    parent = tempfile.mkdtemp(prefix="rayr-sec-")
    os.chmod(parent, 0o755)
    temp_dir = os.path.join(parent, "sessions")
    monkeypatch.setenv("RAYR_TEMP_DIR", temp_dir)
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    monkeypatch.delenv("RAYR_REDIS_PASSWORD", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "RAYR_REDIS_PASSWORD"}
    try:
        yield temp_dir, {**env, "RAYR_TEMP_DIR": temp_dir}
    finally:
        run_cli("stop", env={**env, "RAYR_TEMP_DIR": temp_dir}, check=False)
        shutil.rmtree(parent, ignore_errors=True)


# ------------------------------------------------------------------ item 10: a password always
@as_root
def test_embedded_cluster_refuses_other_users(shared_temp):
    temp_dir, _env = shared_temp
    ctx = rayr.init(num_cpus=1, _temp_dir=temp_dir)
    try:
        port = int(ctx["redis_address"].rsplit(":", 1)[1])
        assert_refused(port)
        assert rayr.get(rayr.remote(lambda: 7).remote()) == 7  # our own processes got the password
        session_dir = ctx["session_dir"]
        done = as_nobody("-c", f"import os; os.listdir({session_dir!r})")
        assert done.returncode != 0 and "PermissionError" in done.stderr
        # the unix socket our processes use is out of reach as well (0700, in a 0700 dir)
        sock_path = os.path.join(session_dir, "redis.sock")
        assert os.path.exists(sock_path) and stat.S_IMODE(os.stat(sock_path).st_mode) == 0o700
        done = as_nobody("-c", f"import socket; socket.socket(socket.AF_UNIX).connect({sock_path!r})")
        assert done.returncode != 0 and "PermissionError" in done.stderr
    finally:
        rayr.shutdown()


@as_root
def test_started_head_refuses_other_users_and_hides_its_session_file(shared_temp):
    temp_dir, env = shared_temp
    port = free_port()
    run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", env=env)
    assert_refused(port)
    session_file = os.path.join(temp_dir, "rayr_current_cluster")
    done = as_nobody("-c", f"open({session_file!r}).read()")
    assert done.returncode != 0 and "PermissionError" in done.stderr
    assert "1 node_" in run_cli("status", env=env).stdout  # we find the password in the session file


def test_no_redis_password_is_an_explicit_opt_out(shared_temp):
    _temp_dir, env = shared_temp
    port = free_port()
    out = run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--no-redis-password", env=env)
    assert "every local user can run code as you" in out.stdout
    assert redis.Redis(port=port).ping()  # no password: what the user asked for
    bad = run_cli("start", "--head", "--bind", "0.0.0.0", "--no-redis-password", env=env, check=False)
    assert bad.returncode != 0 and "beyond loopback" in bad.stderr


def test_redis_password_with_quotes_and_spaces_reaches_redis(tmp_path):
    password = 'a "quoted" pass\\word with spaces'
    port = free_port()
    proc = start_redis(port, password=password, workdir=str(tmp_path))
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "redis.conf").st_mode) == 0o600
        assert password not in " ".join(psutil.Process(proc.pid).cmdline())
        assert redis.Redis(port=port, password=password).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="a").ping()
    finally:
        procs.stop([proc])


# ------------------------------------------------------------------ items 11 and 12: a started cluster
@pytest.fixture(scope="module")
def started() -> Iterator[dict[str, Any]]:
    """`rayr start --head --redis-persist` and a second node with `rayr start --address`, in a
    temp dir of their own."""
    parent = tempfile.mkdtemp(prefix="rayr-sec-")
    temp_dir = os.path.join(parent, "sessions")
    env = {k: v for k, v in os.environ.items() if k not in ("RAYR_REDIS_PASSWORD", "RAYR_ADDRESS")}
    env["RAYR_TEMP_DIR"] = temp_dir
    port = free_port()
    try:
        head = run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--redis-persist", env=env)
        # no password given: the node finds the head's in this user's session file
        node = run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", env=env)
        with open(os.path.join(temp_dir, "rayr_current_cluster")) as f:
            password = json.load(f)["password"]
        assert password and len(password) >= 24
        yield {"temp_dir": temp_dir, "env": env, "port": port, "password": password,
               "outputs": [head.stdout + head.stderr, node.stdout + node.stderr]}
    finally:
        run_cli("stop", env=env, check=False)
        shutil.rmtree(parent, ignore_errors=True)


def _recorded(temp_dir: str) -> list[dict[str, Any]]:
    out = []
    directory = os.path.join(temp_dir, "started")
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            out.append(json.load(f))
    return out


def _descendants_and_daemons(temp_dir: str) -> list[psutil.Process]:
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for record in _recorded(temp_dir):
        for entry in record["processes"]:
            try:
                daemon = psutil.Process(entry["pid"])
                found[daemon.pid] = daemon
                found.update({p.pid: p for p in daemon.children(recursive=True)})
            except psutil.Error:
                pass
    return list(found.values())


def test_password_is_on_no_command_line_nor_printed(started):
    password, temp_dir = started["password"], started["temp_dir"]
    for output in started["outputs"]:
        assert password not in output
    assert "rayr_current_cluster" in started["outputs"][0]  # says where the password is
    rayr.init(address="auto", _temp_dir=temp_dir)
    client = JobSubmissionClient(temp_dir=temp_dir)
    try:
        # a worker of a runtime env: a fresh interpreter started by the raylet
        @rayr.remote(runtime_env={"env_vars": {"SEC_MARK": "yes"}})
        class EnvActor:
            def mark(self):
                return os.environ.get("SEC_MARK"), os.getpid()

        actor = EnvActor.remote()
        assert rayr.get(actor.mark.remote(), timeout=60)[0] == "yes"
        # a submitted job: the supervisor starts its driver, which starts a task
        sid = client.submit_job(entrypoint=(
            f"{shlex.quote(sys.executable)} -c \"import rayr, time; rayr.init(); "
            "print('job', rayr.get(rayr.remote(lambda: 3).remote()), flush=True); time.sleep(300)\""))
        deadline = time.monotonic() + 120
        while "job 3" not in client.get_job_logs(sid):
            status = client.get_job_status(sid)
            assert status in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(sid)
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        seen = []
        for proc in _descendants_and_daemons(temp_dir):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            assert password not in cmd, f"the password is on the command line of {proc.pid}: {cmd}"
            seen.append(cmd)
        # every kind of process was looked at
        assert any("redis-server" in cmd or "valkey-server" in cmd for cmd in seen), seen
        for kind in ("rayr.raylet", "rayr.monitor", "rayr.job_submission.supervisor",
                     "--runtime-env", "time.sleep(300)"):
            assert any(kind in cmd for cmd in seen), (kind, seen)
        client.stop_job(sid)
    finally:
        client.close()
        rayr.shutdown()


def test_cli_takes_the_password_from_the_environment(started, tmp_path):
    address = f"127.0.0.1:{started['port']}"
    elsewhere = {**started["env"], "RAYR_TEMP_DIR": str(tmp_path)}  # no session file there
    out = run_cli("status", "--address", address, env=elsewhere, check=False)
    assert out.returncode != 0
    with_password = {**elsewhere, "RAYR_REDIS_PASSWORD": started["password"]}
    out = run_cli("status", "--address", address, env=with_password)
    assert out.stdout.count(" 1 node_") == 2


def test_session_logs_and_append_only_file_are_private(started):
    record = next(r for r in _recorded(started["temp_dir"])
                  if any(p["role"] == "redis" for p in r["processes"]))
    session = record["session_dir"]
    assert stat.S_IMODE(os.stat(started["temp_dir"]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(session).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(session, "logs")).st_mode) == 0o700
    logs = os.listdir(os.path.join(session, "logs"))
    assert any(n.startswith("worker-") for n in logs) and "redis.log" in logs
    for name in logs:
        assert stat.S_IMODE(os.stat(os.path.join(session, "logs", name)).st_mode) == 0o600, name
    aof = os.path.join(session, "appendonlydir")
    files = [aof, *(os.path.join(aof, n) for n in os.listdir(aof))] if os.path.isdir(aof) else []
    files += [os.path.join(session, n) for n in os.listdir(session) if n.startswith("appendonly")]
    assert files, os.listdir(session)
    for path in files:  # Redis 7 makes a directory of them, 6.2 one file
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
    for path in os.listdir(os.path.join(started["temp_dir"], "started")):
        assert stat.S_IMODE(os.stat(os.path.join(started["temp_dir"], "started", path)).st_mode) == 0o600


def test_printed_redis_restart_command_works(started):
    """Last in the module: it restarts the head's Redis."""
    head_output = started["outputs"][0]
    command = re.search(r"start it again with:\n\s+(.+)", head_output).group(1)
    assert started["password"] not in command
    redis_entry = next(p for r in _recorded(started["temp_dir"])
                       for p in r["processes"] if p["role"] == "redis")
    proc = procs.recorded_process(redis_entry["pid"], redis_entry["create_time"])
    assert proc is not None
    procs.stop_all([proc])
    restarted = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        client = redis.Redis(port=started["port"], password=started["password"])
        deadline = time.monotonic() + 30
        while True:
            try:
                nodes = client.smembers("rayr:{default}:nodes")
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline and restarted.poll() is None
                time.sleep(0.05)
        assert len(nodes) == 2  # the append-only file brought the node table back
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=started["port"]).ping()
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)


# ------------------------------------------------------------------ item 13: stop only our own
def test_stop_spares_a_recorded_pid_that_is_another_process_now(sessions):
    temp_dir, env = sessions
    # a process whose command line looks like rayr's, as a recycled pid could
    decoy = subprocess.Popen(["rayr-redis-server-decoy", "300"], executable=shutil.which("sleep"))
    try:
        created = psutil.Process(decoy.pid).create_time()
        os.makedirs(os.path.join(temp_dir, "started"))
        record = {"pids": [decoy.pid], "session_dir": "",
                  "processes": [{"role": "raylet", "pid": decoy.pid, "create_time": created - 100}]}
        with open(os.path.join(temp_dir, "started", "old.json"), "w") as f:
            json.dump(record, f)
        out = run_cli("stop", env=env)
        assert "Stopped 0" in out.stdout
        time.sleep(0.5)  # a SIGTERM, had one been sent, is delivered by now
        assert decoy.poll() is None, "rayr stop killed a process it did not start"
        assert not os.listdir(os.path.join(temp_dir, "started"))  # the stale record is gone
    finally:
        decoy.kill()
        decoy.wait()


def test_stop_stops_a_cluster_of_three_nodes(sessions):
    temp_dir, env = sessions
    port = free_port()
    try:
        run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", env=env)
        for _ in range(2):
            run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", env=env)
        pids = [p["pid"] for r in _recorded(temp_dir) for p in r["processes"]]
    finally:  # whatever failed above, nothing is left running
        out = run_cli("stop", env=env)
    assert len(pids) == 7  # job supervisor, monitor, dashboard, Redis, three raylets
    assert "Stopped 7" in out.stdout
    assert not any(procs.pid_running(p) for p in pids)
    with socket.socket() as sock:  # Redis is gone: its port is free
        assert sock.connect_ex(("127.0.0.1", port)) != 0
