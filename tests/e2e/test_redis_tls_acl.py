"""A cluster on a TLS-only Redis that requires client certificates, as an ACL user holding only
the rules docs/clusters/existing-redis.md lists (``rayr.testing_redis.acl_rules``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import rayr
from rayr.testing import run_cli
from rayr.testing_redis import (
    RedisProcess,
    acl_rules,
    add_acl_user,
    make_tls_files,
    server_binary,
    start_server,
)
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ADMIN_PASSWORD = "admin-pw"
USER, USER_PASSWORD = "rayr-user", "user-pw"
CLUSTER = "tls-acl"


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    binary, why = server_binary()
    if binary is None:
        pytest.skip(why)
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes the test's certificates")
    workdir = tempfile.mkdtemp(prefix="rayr-tls-")
    tls = make_tls_files(os.path.join(workdir, "tls"))
    redis_server: RedisProcess = start_server(binary, os.path.join(workdir, "redis"), password=ADMIN_PASSWORD,
                                              tls=tls)
    try:
        add_acl_user(redis_server, USER, USER_PASSWORD, acl_rules(CLUSTER))
        yield {"server": redis_server, "tls": tls, "workdir": workdir,
               "address": f"rediss://{USER}@127.0.0.1:{redis_server.port}"}
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _env(temp_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAYR_ADDRESS", "RAYR_CLUSTER_NAME")}
    return {**env, "RAYR_TEMP_DIR": temp_dir, "RAYR_REDIS_PASSWORD": USER_PASSWORD}


def test_a_cluster_over_tls_with_client_certificates_as_an_acl_user(server, tmp_path):
    tls = server["tls"]
    files = ["--redis-ca-cert", tls.ca, "--redis-client-cert", tls.client_cert, "--redis-client-key",
             tls.client_key]
    head_env, node_env = _env(str(tmp_path / "head")), _env(str(tmp_path / "node"))
    admin = server["server"].client()
    admin.execute_command("ACL", "LOG", "RESET")
    try:
        head = run_cli("start", "--head", "--redis-address", server["address"], *files, "--cluster-name",
                       CLUSTER, "--num-cpus", "1", env=head_env)
        url = head.stdout.split("cluster address ")[1].split()[0]
        assert url.startswith("rediss://") and "ssl_certfile=" in url and USER_PASSWORD not in url
        node = run_cli("start", "--address", url, "--cluster-name", CLUSTER, "--num-cpus", "1", env=node_env)
        far = node.stdout.split()[2]
        rayr.init(address=url, _redis_password=USER_PASSWORD, _cluster_name=CLUSTER)
        try:
            _workload(far)
        finally:
            rayr.shutdown()
        status = run_cli("status", env=head_env)  # the CLI finds it from the session file
        assert status.stdout.count(" 1 node_") == 2
        # nothing rayr did was denied by the ACL (Redis logs every denial), but the head's check
        # of the persistence settings: CONFIG GET would also show the password, so the rules
        # leave it out and the check says it could not tell
        denied = [e for e in admin.execute_command("ACL", "LOG") if e[b"object"] != b"config|get"]
        assert not denied, denied
        assert "CONFIG GET is refused" in head.stderr
    finally:
        run_cli("stop", env=node_env, check=False)
        run_cli("stop", env=head_env, check=False)
        admin.close()


@rayr.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


@rayr.remote
def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@rayr.remote
def total(a: np.ndarray) -> tuple[int, str]:
    return int(a.sum()), rayr.get_runtime_context().get_node_id()


def _workload(far: str) -> None:
    assert sum(rayr.get([rayr.remote(lambda x: x * 2).remote(i) for i in range(300)], timeout=120)) == 89700
    counter = Counter.remote()
    assert rayr.get([counter.add.remote(1) for _ in range(20)], timeout=60)[-1] == 20
    # 40 MB made on the far node, read on the head's: chunks go through Redis over TLS
    here = rayr.get_runtime_context().get_node_id()
    arr = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(far, soft=False)).remote(5_000_000)
    s, where = rayr.get(total.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
                        .remote(arr), timeout=120)
    assert (s, where) == (5_000_000 * 4_999_999 // 2, here)
    assert int(rayr.get(arr, timeout=120)[-1]) == 4_999_999  # and into the driver


def test_a_client_without_a_certificate_or_with_a_wrong_password_gets_one_line(server, tmp_path):
    env = _env(str(tmp_path))
    no_cert = f"{server['address']}?ssl_ca_certs={server['tls'].ca}"
    out = run_cli("status", "--address", no_cert, env=env, check=False)
    assert out.returncode != 0 and out.stderr.strip().startswith("Cannot reach the Redis at rediss://")
    with_cert = f"{no_cert}&ssl_certfile={server['tls'].client_cert}&ssl_keyfile={server['tls'].client_key}"
    out = run_cli("status", "--address", with_cert, env={**env, "RAYR_REDIS_PASSWORD": "wrong"}, check=False)
    assert out.returncode != 0 and "refused the Redis password given" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli("status", "--address", "rediss://127.0.0.1:1?ssl_cert_reqs=sometimes", env=env, check=False)
    assert out.returncode != 0 and "ssl_cert_reqs must be required, optional or none" in out.stderr
