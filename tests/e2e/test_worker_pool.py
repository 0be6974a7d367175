"""The node's worker pool grows for a fan-out whose parents block, and shrinks back after."""

from __future__ import annotations

import time

import psutil

import rayr
from rayr import context


@rayr.remote
def child(i):
    return i


@rayr.remote
def parent(k):
    return sum(rayr.get([child.remote(i) for i in range(k)]))


def _workers() -> int:
    count = 0
    for p in psutil.Process().children(recursive=True):
        try:
            count += p.name() == "rayr-worker"
        except psutil.NoSuchProcess:  # exited while we looked (idle workers do)
            pass
    return count


def test_workers_started_for_blocked_parents_exit_once_idle(ray):
    assert rayr.get([parent.remote(20) for _ in range(8)]) == [190] * 8
    grown = _workers()
    assert grown > 2, "eight blocked parents on two CPUs need more workers than the pool's two"
    deadline = time.monotonic() + 15
    while _workers() > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers() == 2, f"{_workers()} workers left of {grown}; the pool keeps num_cpus=2"
    assert rayr.get(parent.remote(5)) == 10  # and the node still works


def test_idle_workers_have_connected_what_their_first_task_or_actor_reads_on(ray):
    """A worker opens its lease's and an actor's mailbox connections before it says Ready:
    a new connection's first command would otherwise sit on its first task's or actor's path."""
    assert rayr.get(child.remote(1)) == 1
    r = context.require_core().gcs.r
    deadline = time.monotonic() + 15
    while True:
        names = [c["name"] for c in r.client_list()]
        lease = {n.removeprefix("rayr-lease-") for n in names if n.startswith("rayr-lease-")}
        mailbox = {n.removeprefix("rayr-mailbox-") for n in names if n.startswith("rayr-mailbox-")}
        if lease & mailbox or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lease & mailbox, f"no worker holds both (lease: {sorted(lease)}, mailbox: {sorted(mailbox)})"
