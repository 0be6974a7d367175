"""The ssh provider against a real sshd on loopback: `rayr up` sets up and starts the head over
ssh, the head's autoscaler starts a worker on a second "host" (127.0.0.2) over ssh, and
`rayr down` stops both, leaving no process."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rayr import procs
from rayr.node import free_port
from rayr.testing import run_cli

HOSTS = ("127.0.0.1", "127.0.0.2")


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.access(p, os.X_OK)), None)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A real sshd on a free port of 127.0.0.1 and 127.0.0.2 accepting a generated user key;
    yields (port, private key path) and stops it by pid."""
    binary = find_sshd()
    if binary is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does it as root)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", *[f"ListenAddress {h}" for h in HOSTS], f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", f"PidFile {d / 'sshd.pid'}",
        "Subsystem sftp internal-sftp", f"AllowUsers {getpass.getuser()}", "",
    ]))
    with open(d / "sshd.log", "ab") as log:
        proc = procs.spawn([binary, "-D", "-e", "-f", str(d / "sshd_config")], log=log)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection((HOSTS[1], port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (d / "sshd.log").read_text()
                time.sleep(0.05)
        yield port, str(d / "user_key")
    finally:
        procs.stop([proc])


def remote_processes(remote_dir: str, redis_port: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            # redis-server renames itself to "redis-server 127.0.0.1:<port>"
            if proc.info["status"] != psutil.STATUS_ZOMBIE and (
                remote_dir in cmd or f"redis-server 127.0.0.1:{redis_port}" in cmd
            ):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def test_ssh_provider_up_exec_submit_down(sshd, sessions, tmp_path):
    port, key = sshd
    _temp_dir, env = sessions
    remote = str(tmp_path / "remote")
    redis_port = free_port()
    mounted = tmp_path / "data.txt"
    mounted.write_text("mounted-data")
    script = tmp_path / "job.py"
    script.write_text("import rayr\nrayr.init()\nprint('nodes', len(rayr.nodes()))\n")
    rayr_cmd = f"{sys.executable} -P -m rayr.cli.main"
    config = tmp_path / "ssh.yaml"
    config.write_text(f"""
cluster_name: sshtest
max_workers: 1
idle_timeout_minutes: 5
autoscaler_interval_s: 0.3
provider:
  type: ssh
  head_ip: {HOSTS[0]}
  worker_ips: [{HOSTS[1]}]
  ssh_port: {port}
  rayr_command: {rayr_cmd}
  remote_temp_dir: {remote}
auth:
  ssh_user: {getpass.getuser()}
  ssh_private_key: {key}
available_node_types:
  head:
    resources: {{CPU: 1}}
    max_workers: 0
  worker:
    resources: {{CPU: 1, special: 1}}
    min_workers: 1
    max_workers: 1
head_node_type: head
file_mounts:
  {remote}/mounts/data.txt: {mounted}
setup_commands:
  - echo "setup on $RAYR_NODE_TYPE" >> {remote}/setup.log
redis:
  port: {redis_port}
""")
    try:
        out = run_cli("up", str(config), "--yes", "--timeout", "60", env=env).stdout
        assert f"is up at redis://{HOSTS[0]}:{redis_port} (2 node(s); ssh provider)" in out
        status = run_cli("exec", str(config), f"{rayr_cmd} status", env=env).stdout
        assert status.count(" 1 node_") == 2 and "0.0/1.0 special" in status
        assert "1 worker" in status  # the autoscaler's view: one worker node of type "worker"
        assert run_cli("submit", str(config), str(script), env=env).stdout.strip() == "nodes 2"
        assert (Path(remote) / "mounts" / "data.txt").read_text() == "mounted-data"
        setup = (Path(remote) / "setup.log").read_text().split("\n")
        assert sorted(filter(None, setup)) == ["setup on head", "setup on worker"]
        assert run_cli("get-head-ip", str(config), env=env).stdout.strip() == HOSTS[0]
    finally:
        down = run_cli("down", str(config), "--yes", env=env)
    assert "is down" in down.stdout
    deadline = time.time() + 15
    while remote_processes(remote, redis_port) and time.time() < deadline:
        time.sleep(0.1)
    assert remote_processes(remote, redis_port) == []
