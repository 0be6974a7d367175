"""Namespace locks and the reclaim of dead raylets' store files (rayr/object_store/orphans.py).

Real processes hold the locks: a child process stands in for a raylet and is SIGKILLed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

from rayr.object_store.orphans import NamespaceLock, orphaned_namespaces, reclaim_orphans


def _hold(directories: list[str], namespace: str, ready, done) -> None:
    lock = NamespaceLock(namespace, directories)
    for directory in directories:
        for name in (f"{namespace}-{'ab' * 20}", f"{namespace}-pool-1", f"{namespace}-{'cd' * 20}.77.tmp"):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(b"x" * 100)
    ready.set()
    done.wait(60)
    lock.release()


@pytest.fixture
def raylet(tmp_path):
    """A process holding namespace ``rayr-0123456789abcdef`` in two directories, with files."""
    dirs = [str(tmp_path / "primary"), str(tmp_path / "spill")]
    for d in dirs:
        os.mkdir(d)
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(dirs, "rayr-0123456789abcdef", ready, done))
    proc.start()
    assert ready.wait(30)
    yield proc, dirs, done
    if proc.is_alive():  # an Event set with a SIGKILLed waiter would wait for it forever
        done.set()
    proc.join(30)


def test_a_live_raylets_files_are_left_alone(raylet):
    proc, dirs, _ = raylet
    before = {d: sorted(os.listdir(d)) for d in dirs}
    assert reclaim_orphans(dirs) == []
    assert {d: sorted(os.listdir(d)) for d in dirs} == before
    assert "rayr-0123456789abcdef.lock" in before[dirs[0]]


def test_a_killed_raylets_files_are_reclaimed_and_others_kept(raylet):
    proc, dirs, _ = raylet
    keep = [  # another live-looking namespace without a lock file (an older rayr), and a stranger
        os.path.join(dirs[0], f"rayr-fedcba9876543210-{'ee' * 20}"),
        os.path.join(dirs[0], "not-rayr"),
    ]
    for path in keep:
        open(path, "wb").close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert orphaned_namespaces(dirs[0]) == ["rayr-0123456789abcdef"]
    assert sorted(os.listdir(dirs[0])) != sorted(os.path.basename(p) for p in keep)  # still there
    assert reclaim_orphans(dirs) == ["rayr-0123456789abcdef"] * 2
    assert sorted(os.listdir(dirs[0])) == sorted(os.path.basename(p) for p in keep)
    assert os.listdir(dirs[1]) == []
    assert reclaim_orphans(dirs) == []


def test_a_clean_exit_leaves_no_lock_file(raylet):
    proc, dirs, done = raylet
    done.set()
    proc.join(30)
    assert proc.exitcode == 0
    assert not any(n.endswith(".lock") for d in dirs for n in os.listdir(d))


def _probe(path: str, queue) -> None:
    # a forked child of the holder holds nothing: it must see the lock as taken
    queue.put(orphaned_namespaces(os.path.dirname(path)))


def test_the_holder_never_reclaims_or_drops_its_own_lock(tmp_path):
    lock = NamespaceLock("rayr-00000000000000aa", [str(tmp_path)])
    try:
        obj = tmp_path / f"rayr-00000000000000aa-{'11' * 20}"
        obj.write_bytes(b"mine")
        # in the holding process: probing would "succeed" (POSIX locks are per process) and
        # closing the probe's descriptor would drop the lock
        assert reclaim_orphans([str(tmp_path)]) == [] and obj.exists()
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_probe, args=(str(tmp_path / "x"), queue))
        child.start()
        assert queue.get(timeout=30) == [], "the lock must still be held after our own reclaim"
        child.join(30)
    finally:
        lock.release()
    assert os.listdir(tmp_path) == [f"rayr-00000000000000aa-{'11' * 20}"]
