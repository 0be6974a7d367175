"""A head on a Redis the user already runs (password-protected), several clusters sharing it,
the checks a head makes of it, the occupied-port refusal, and the CLI's password handling."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import redis

import rayr
from rayr import procs
from rayr.job_submission import JobStatus, JobSubmissionClient
from rayr.node import free_port, start_redis
from rayr.testing import run_cli, wait_node_dead
from rayr.util.placement_group import placement_group, remove_placement_group
from rayr.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PASSWORD = "ext-pw with spaces & 'quotes'"


def _env(temp_dir: str, **extra: str) -> dict[str, str]:
    ours = ("RAYR_REDIS_PASSWORD", "RAYR_ADDRESS", "RAYR_CLUSTER_NAME", "RAYR_REDIS_PASSWORD_FILE")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    return {**env, "RAYR_TEMP_DIR": temp_dir, **extra}


@pytest.fixture(scope="module")
def external() -> Iterator[dict[str, Any]]:
    """A password-protected redis-server, as a team runs one: not started by rayr's CLI."""
    workdir = tempfile.mkdtemp(prefix="rayr-ext-")
    port = free_port()
    proc = start_redis(port, password=PASSWORD, workdir=workdir)
    try:
        yield {"port": port, "url": f"redis://127.0.0.1:{port}", "workdir": workdir}
    finally:
        procs.stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def head(external) -> Iterator[dict[str, Any]]:
    """`rayr start --head --redis-address` on the external Redis, password from the environment."""
    temp_dir = tempfile.mkdtemp(prefix="rayr-ext-head-")
    env = _env(temp_dir, RAYR_REDIS_PASSWORD=PASSWORD)
    try:
        out = run_cli("start", "--head", "--redis-address", external["url"], "--num-cpus", "1", env=env)
        yield {**external, "temp_dir": temp_dir, "env": env, "output": out.stdout + out.stderr}
    finally:
        run_cli("stop", env=env, check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _records(temp_dir: str) -> list[dict[str, Any]]:
    directory = os.path.join(temp_dir, "started")
    out = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            out.append(json.load(f))
    return out


def _command_lines(temp_dirs: list[str]) -> list[str]:
    """Command lines of every process the records name, their children, and ours."""
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for temp_dir in temp_dirs:
        for record in _records(temp_dir):
            for entry in record["processes"]:
                try:
                    daemon = psutil.Process(entry["pid"])
                except psutil.Error:
                    continue
                found[daemon.pid] = daemon
                found.update({p.pid: p for p in daemon.children(recursive=True)})
    lines = []
    for proc in found.values():
        try:
            lines.append(" ".join(proc.cmdline()))
        except psutil.Error:
            pass
    return lines


@rayr.remote
def where() -> str:
    return rayr.get_runtime_context().get_node_id()


def test_head_on_an_existing_redis_runs_groups_jobs_and_sees_a_node_die(head, tmp_path):
    assert "redis://127.0.0.1" in head["output"] and "persistence" in head["output"]  # the warning
    # a node on another "host" (its own temp dir): address and password in the URL, which rayr
    # takes apart: the password must reach no command line and no output
    node_dir = str(tmp_path / "node")
    url_with_password = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{head['port']}"
    node_env = _env(node_dir, RAYR_ADDRESS=url_with_password)
    try:
        out = run_cli("start", "--num-cpus", "1", env=node_env)  # no flags: RAYR_ADDRESS says where
        assert PASSWORD not in out.stdout + out.stderr
        node_id = out.stdout.split()[2]
        rayr.init(address=head["url"], _redis_password=PASSWORD, _temp_dir=head["temp_dir"])
        try:
            _groups_and_jobs_work(head, node_id)
            cmds = _command_lines([head["temp_dir"], node_dir])
            assert any("rayr.monitor" in c for c in cmds) and any("rayr.raylet" in c for c in cmds)
            leaked = [c for c in cmds if PASSWORD in c or "ext-pw" in c]
            assert not leaked, f"the password is on a command line: {leaked}"
            # node death: the joined node's raylet is killed; the head's monitor declares it dead
            raylet = next(p for r in _records(node_dir) for p in r["processes"] if p["role"] == "raylet")
            os.kill(raylet["pid"], signal.SIGKILL)
            wait_node_dead(node_id, timeout=60)
            assert rayr.get(where.remote(), timeout=60) != node_id
        finally:
            rayr.shutdown()
    finally:
        run_cli("stop", env=node_env, check=False)  # also reclaims the killed raylet's store


def _groups_and_jobs_work(head: dict[str, Any], node_id: str) -> None:
    nodes = {n["NodeID"] for n in rayr.nodes() if n["Alive"]}
    assert len(nodes) == 2 and node_id in nodes
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(60), "the head's monitor did not place the group"
    placed = rayr.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                       for i in range(2)], timeout=60)
    assert set(placed) == nodes
    remove_placement_group(pg)
    client = JobSubmissionClient(head["url"], redis_password=PASSWORD)
    try:
        sid = client.submit_job(entrypoint=f"{shlex.quote(sys.executable)} -c \"import rayr; rayr.init(); "
                                           "print('answer', rayr.get(rayr.remote(lambda: 42).remote()))\"")
        status = client.wait_until_finish(sid, timeout_s=120)
        assert status == JobStatus.SUCCEEDED, (status, client.get_job_logs(sid))
        assert "answer 42" in client.get_job_logs(sid)
    finally:
        client.close()


def test_a_second_cluster_shares_the_redis_under_its_own_name(head, tmp_path):
    env = _env(str(tmp_path / "b"), RAYR_REDIS_PASSWORD=PASSWORD)
    same = run_cli("start", "--head", "--redis-address", head["url"], env=env, check=False)
    assert same.returncode != 0
    assert "cluster name 'default' is in use on this Redis" in same.stderr
    assert "--cluster-name" in same.stderr
    try:
        run_cli("start", "--head", "--redis-address", head["url"], "--cluster-name", "second",
                "--num-cpus", "1", env=env)
        # the CLI on that host finds the second cluster (its name is in the session file)
        mine = run_cli("status", "--format", "json", env=env)
        theirs = run_cli("status", "--format", "json", env=head["env"])
        assert len(json.loads(mine.stdout)["active"]) == len(json.loads(theirs.stdout)["active"]) == 1
        assert json.loads(mine.stdout)["active"] != json.loads(theirs.stdout)["active"]
    finally:
        run_cli("stop", env=env, check=False)


def test_a_head_refuses_a_redis_that_would_evict_its_keys(head, tmp_path):
    admin = redis.Redis(port=head["port"], password=PASSWORD)
    admin.config_set("maxmemory", str(1 << 30))
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        out = run_cli("start", "--head", "--redis-address", head["url"], "--cluster-name", "evicted",
                      env=_env(str(tmp_path / "c"), RAYR_REDIS_PASSWORD=PASSWORD), check=False)
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "0")
        admin.close()
    assert out.returncode != 0
    assert "maxmemory-policy is allkeys-lru" in out.stderr and "noeviction" in out.stderr
    started = tmp_path / "c" / "started"
    assert not started.exists() or not os.listdir(started)  # nothing was started


def test_start_head_refuses_a_port_where_a_redis_already_answers(external, tmp_path):
    env = _env(str(tmp_path / "d"))
    out = run_cli("start", "--head", "--port", str(external["port"]), env=env, check=False)
    assert out.returncode != 0
    assert f"port {external['port']} on 127.0.0.1 is already in use" in out.stderr
    assert f"--redis-address redis://127.0.0.1:{external['port']}" in out.stderr
    assert not os.path.exists(str(tmp_path / "d" / "rayr_current_cluster"))


def test_every_cli_command_takes_address_and_password_from_the_environment(head, tmp_path):
    elsewhere = str(tmp_path / "e")  # no session file: as on another host
    bare = _env(elsewhere, RAYR_ADDRESS=head["url"])
    for args in (["status"], ["list", "nodes"], ["job", "list"], ["memory"]):
        out = run_cli(*args, env=bare, check=False)
        assert out.returncode != 0, args
        line = out.stderr.strip()
        assert "\n" not in line and "requires a Redis password" in line, args
        assert "RAYR_REDIS_PASSWORD" in line, args
        wrong = run_cli(*args, env={**bare, "RAYR_REDIS_PASSWORD": "nope"}, check=False)
        assert wrong.returncode != 0 and "refused the Redis password" in wrong.stderr.strip(), args
        assert "\n" not in wrong.stderr.strip()
        ok = run_cli(*args, env={**bare, "RAYR_REDIS_PASSWORD": PASSWORD})
        assert PASSWORD not in ok.stdout + ok.stderr
    # a password file: refused while others may read it, taken once private
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    out = run_cli("status", "--redis-password-file", str(secret), env=bare, check=False)
    assert out.returncode != 0 and "chmod 600" in out.stderr
    secret.chmod(0o600)
    run_cli("status", "--redis-password-file", str(secret), env=bare)
    run_cli("list", "nodes", env={**bare, "RAYR_REDIS_PASSWORD_FILE": str(secret)})
    # the flag works but says what it costs
    out = run_cli("status", "--redis-password", PASSWORD, env=bare)
    assert "visible to every user" in out.stderr
