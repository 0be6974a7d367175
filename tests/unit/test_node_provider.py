"""The local node provider stops a node that an earlier monitor started only while its recorded
pid still names that process (pid and create time), as `rayr stop` and `rayr down` do."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayr import procs
from rayr.autoscaler.config import load_cluster_config
from rayr.autoscaler.node_provider import LocalNodeProvider, ProviderNode
from rayr.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A process that stands in for a raylet (or for whatever reused its pid)."""
    proc = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    procs.stop([proc])


def _provider(tmp_path: Path) -> LocalNodeProvider:
    cfg = load_cluster_config(ROOT / "configs" / "local.yaml")
    settings = Settings(temp_dir=str(tmp_path / "sessions"))
    # nothing here talks to Redis: the provider only reads its node file and signals processes
    return LocalNodeProvider(cfg, str(tmp_path / "state"), settings, "redis://127.0.0.1:1",
                             str(tmp_path / "session"))


def _record(provider: LocalNodeProvider, pid: int, create_time: float | None) -> None:
    with provider._nodes() as nodes:
        nodes["a" * 32] = ProviderNode("a" * 32, "special_worker", 0.0, rayr_node_id="a" * 32, pid=pid,
                                       create_time=create_time)


def test_a_recorded_node_is_stopped(tmp_path, sleeper):
    provider = _provider(tmp_path)
    _record(provider, sleeper.pid, procs.create_time(sleeper.pid))
    assert [n.pid for n in provider.non_terminated_nodes()] == [sleeper.pid]
    assert provider.terminate_all() == 1
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert provider.non_terminated_nodes() == []


def test_a_reused_pid_is_never_signalled(tmp_path, sleeper):
    provider = _provider(tmp_path)
    created = procs.create_time(sleeper.pid)
    assert created is not None
    _record(provider, sleeper.pid, created - 60)  # the recorded raylet ended; its pid was reused
    assert provider.non_terminated_nodes() == []  # not taken for the node: forgotten
    _record(provider, sleeper.pid, created - 60)
    provider.terminate_node("a" * 32)
    assert sleeper.poll() is None


def test_an_old_record_without_create_time_needs_the_node_id_on_the_command_line(tmp_path, sleeper):
    provider = _provider(tmp_path)
    _record(provider, sleeper.pid, None)
    provider.terminate_node("a" * 32)
    assert sleeper.poll() is None
