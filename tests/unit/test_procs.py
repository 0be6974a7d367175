"""Forked daemons: set up like a fresh interpreter, tracked like a Popen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings

import psutil
import pytest

from rayr import procs


def test_a_forked_child_is_a_clean_daemon(tmp_path):
    inherited_r, inherited_w = os.pipe()  # a descriptor of ours the child must not keep
    log = tmp_path / "child.log"
    marker = tmp_path / "facts"

    def body() -> None:
        facts = [
            psutil.Process().name(),
            str(os.path.exists(f"/proc/self/fd/{inherited_w}")),
            str(warnings.filters == []),
            str(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL),
        ]
        marker.write_text(" ".join(facts))
        print("to the log", flush=True)
        raise SystemExit(7)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under pytest: the child must not inherit it
        with open(log, "ab") as f:
            child = procs.fork_call("rayr-testchild", body, log=f)
    os.close(inherited_w)
    assert child.wait(timeout=10) == 7
    assert child.poll() == 7 and child.returncode == 7
    assert marker.read_text().split() == ["rayr-testchild", "False", "True", "True"]
    assert log.read_text() == "to the log\n"
    # the child held no copy of the pipe's write end: the read end sees EOF at once
    assert os.read(inherited_r, 1) == b""
    os.close(inherited_r)


def test_a_failing_child_reports_its_traceback_and_exit_code(tmp_path):
    log = tmp_path / "child.log"

    def body() -> None:
        raise RuntimeError("boom in the child")

    with open(log, "ab") as f:
        child = procs.fork_call("rayr-failing", body, log=f)
    assert child.wait(timeout=10) == 1
    assert "RuntimeError: boom in the child" in log.read_text()


def test_stop_terminates_a_forked_child(tmp_path):
    child = procs.fork_call("rayr-sleeper", lambda: threading.Event().wait(60))
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.05)
    procs.stop([child], timeout=5)
    assert child.returncode == -signal.SIGTERM


def test_no_fork_while_another_thread_runs():
    fresh = subprocess.run([sys.executable, "-c", "from rayr import procs; print(procs.can_fork())"],
                           capture_output=True, text=True, timeout=60)
    assert fresh.stdout.strip() == "True", fresh.stderr
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not procs.can_fork()
    finally:
        stop.set()
        t.join()


EMBEDDED = """
import os, sys, threading, psutil, rayr
if sys.argv[1] == "thread":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
rayr.init(num_cpus=1)
@rayr.remote
def f():
    return psutil.Process().name(), psutil.Process(os.getppid()).name()
print(rayr.get(f.remote()))
me = psutil.Process()
print(sorted(p.name() for p in me.children() if p.name() not in ("redis-server", "valkey-server")))
print(sorted(" ".join(p.cmdline()) == " ".join(me.cmdline()) for p in me.children()))
rayr.shutdown()
"""


def _embedded(mode: str, tmp_path) -> list[str]:
    """Run EMBEDDED in a fresh driver; its three printed lines."""
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", EMBEDDED, mode], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_an_embedded_cluster_forks_its_daemons_from_the_driver(tmp_path):
    worker, daemons, same_cmdline = _embedded("plain", tmp_path)
    assert worker == "('rayr-worker', 'rayr-zygote')"
    assert daemons == "['rayr-dashboard', 'rayr-monitor', 'rayr-raylet']"
    assert same_cmdline == "[False, True, True, True]"  # redis-server is started, the rest forked


def test_a_driver_with_threads_starts_its_daemons_as_new_interpreters(tmp_path):
    worker, daemons, same_cmdline = _embedded("thread", tmp_path)
    # the raylet itself forks its zygote (it has one thread then), whatever the driver had
    assert worker == "('rayr-worker', 'rayr-zygote')"
    assert daemons.count("python") == 3 and "rayr-" not in daemons
    assert same_cmdline == "[False, False, False, False]"
