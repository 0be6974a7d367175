"""Shared fixtures: a real Redis for the session, a real cluster per module, leak checks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
import pytest

import rayr
from rayr.object_store.orphans import LOCK_SUFFIX, SHM_DIRECTORY, orphaned_namespaces
from rayr.testing import Cluster, redis_server


def rayr_processes() -> list[psutil.Process]:
    """rayr and Redis (or Valkey) processes that descend from this test process."""
    me = psutil.Process()
    out = []
    for proc in me.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            name = proc.name()
        except psutil.Error:
            continue
        # daemons forked from a driver keep its command line but are named rayr-*
        if "rayr" in cmd or "redis-server" in cmd or "valkey-server" in cmd or name.startswith("rayr-"):
            out.append(proc)
    return out


def orphaned_segments() -> set[str]:
    """/dev/shm files of store namespaces whose raylet is gone but left them behind.

    Not every ``rayr-*`` file: other rayr clusters may run on this host while the suite runs
    (other suites, other users' work), and their files come and go as they please. A live
    raylet holds its namespace's lock (rayr/object_store/orphans.py), so a namespace whose
    lock file is there but free is one whose raylet died without its files being cleaned up:
    a leak, whoever started it. Namespaces without a lock file (an older rayr running
    alongside) are never counted. What this cannot see is a file written into a namespace
    after its raylet cleaned up and removed its lock; the store tests that care check their
    own directories for that.
    """
    names = os.listdir(SHM_DIRECTORY)
    return {
        name
        for namespace in orphaned_namespaces(SHM_DIRECTORY)
        for name in names
        if name.startswith(namespace + "-") or name == namespace + LOCK_SUFFIX
    }


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers(redis_url: str) -> Iterator[None]:
    before = orphaned_segments()
    yield
    rayr.shutdown()
    # the session Redis is stopped after this check; every other process must be gone
    session_port = redis_url.rsplit(":", 1)[-1]
    leftover = [
        p for p in rayr_processes()
        if p.status() != psutil.STATUS_ZOMBIE and f":{session_port}" not in " ".join(p.cmdline())
    ]
    assert not leftover, f"processes left behind: {[p.cmdline() for p in leftover]}"
    assert orphaned_segments() - before == set(), "shared-memory segments left behind"


@pytest.fixture
def sessions(tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """An isolated RAYR_TEMP_DIR (no cluster recorded by `rayr start` is visible) for this
    process and, as the returned env, for the subprocesses a test starts."""
    temp_dir = str(tmp_path / "rayr-sessions")
    monkeypatch.setenv("RAYR_TEMP_DIR", temp_dir)
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    env = {**os.environ, "RAYR_TEMP_DIR": temp_dir}
    return temp_dir, env


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    """One node with 2 CPUs on the session Redis, with a driver connected."""
    c = Cluster(redis_url)
    c.add_node(num_cpus=2, resources={"custom": 2})
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c
    rayr.shutdown()
    c.shutdown()


@pytest.fixture
def ray(cluster: Cluster) -> object:
    """The rayr module, connected to the module's cluster."""
    return rayr


@pytest.fixture(scope="module")
def tmpfs_ok() -> None:
    """Skips (saying why) where a private mount namespace with a small tmpfs cannot be made."""
    from rayr.testing import tmpfs_unavailable

    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)


def _server_binary_or_skip() -> str:
    from rayr.testing_redis import server_binary

    binary, why = server_binary()
    if binary is None:
        pytest.skip(why)
    return binary


@pytest.fixture
def sentinels(request: pytest.FixtureRequest) -> Iterator[object]:
    """A master, a replica and three Sentinels (rayr.testing_redis.sentinel_set), all with the
    test module's ``PASSWORD``."""
    import shutil
    import tempfile

    from rayr.testing_redis import sentinel_set

    binary = _server_binary_or_skip()
    workdir = tempfile.mkdtemp(prefix="rayr-sentinel-")
    try:
        with sentinel_set(binary, workdir, password=request.module.PASSWORD) as found:
            yield found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster_set(request: pytest.FixtureRequest) -> Iterator[object]:
    """A Redis Cluster of three masters on loopback (rayr.testing_redis.redis_cluster), with
    the test module's ``PASSWORD``; one per module."""
    import shutil
    import tempfile

    from rayr.testing_redis import redis_cluster

    binary = _server_binary_or_skip()
    workdir = tempfile.mkdtemp(prefix="rayr-rcluster-")
    try:
        with redis_cluster(binary, workdir, password=request.module.PASSWORD) as found:
            yield found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
