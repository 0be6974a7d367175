"""Distributed reference counting: objects live while any process or object holds a ref to them,
and are freed (table entry and store memory) once nothing does."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np

import rayr
from rayr import context

BIG = 300_000  # float64s: 2.4 MB, so the object sits in the node's store


def _exists(oid_hex: str) -> bool:
    core = context.require_core()
    return bool(core.gcs.r.exists(core.keys.object(oid_hex)))


def _outliving(hexes: list[str], timeout: float = 15.0) -> list[str]:
    """Those of ``hexes`` whose object records are still in Redis after ``timeout``."""
    r, keys = context.require_core().gcs.r, context.require_core().keys
    left = hexes
    deadline = time.monotonic() + timeout
    while True:
        with r.pipeline(transaction=False) as p:
            for h in left:
                p.exists(keys.object(h))
            left = [h for h, there in zip(left, p.execute(), strict=True) if there]
        if not left or time.monotonic() > deadline:
            return left
        gc.collect()
        rayr.get(rayr.put(0))  # a safe point: queued ref releases are counted down
        time.sleep(0.1)


def _freed(oid_hex: str, timeout: float = 15.0) -> bool:
    return not _outliving([oid_hex], timeout)


def _store_used() -> int:
    return context.require_core().store.usage().used_bytes


@rayr.remote
def total(holder):
    return float(rayr.get(holder[0]).sum())


@rayr.remote
def make_inner():
    return [rayr.put(np.ones(BIG))]  # owned by the worker, held by the returned list


@rayr.remote
class Keeper:
    def __init__(self):
        self.kept = None

    def keep(self, holder):
        self.kept = holder[0]

    def read(self):
        return float(rayr.get(self.kept).sum())

    def drop(self):
        self.kept = None


def test_a_ref_inside_a_put_object_lives_as_long_as_its_container(ray):
    baseline = _store_used()
    inner = rayr.put(np.ones(BIG))
    inner_hex = inner.hex()
    outer = rayr.put([inner])
    del inner
    gc.collect()
    time.sleep(1.5)
    assert _exists(inner_hex)  # held by `outer` only
    (again,) = rayr.get(outer)
    assert rayr.get(again).sum() == BIG
    del again, outer
    assert _freed(inner_hex)
    deadline = time.monotonic() + 10
    while _store_used() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _store_used() <= baseline


def test_nested_task_arguments_are_held_until_the_task_ran(ray):
    ref = rayr.put(np.ones(BIG))
    ref_hex = ref.hex()
    out = total.remote([ref])
    del ref  # only the pending task holds it now
    assert rayr.get(out) == BIG
    assert _freed(ref_hex)


def test_a_ref_returned_by_a_task_outlives_the_task_then_is_freed(ray):
    (inner,) = rayr.get(make_inner.remote())
    inner_hex = inner.hex()
    time.sleep(1.5)  # the worker's own ref is long gone; we borrow it
    assert rayr.get(inner).sum() == BIG
    del inner
    assert _freed(inner_hex)


def test_an_actor_keeps_a_borrowed_ref_alive_until_it_drops_it(ray):
    keeper = Keeper.remote()
    ref = rayr.put(np.ones(BIG))
    ref_hex = ref.hex()
    rayr.get(keeper.keep.remote([ref]))
    del ref
    gc.collect()
    time.sleep(2.0)
    assert _exists(ref_hex)
    assert rayr.get(keeper.read.remote()) == BIG
    rayr.get(keeper.drop.remote())
    assert _freed(ref_hex)
    rayr.kill(keeper)


def test_store_returns_to_baseline_after_a_mixed_workload(ray):
    baseline = _store_used()
    refs = [rayr.put(np.full(BIG, i)) for i in range(5)]
    holders = [rayr.put([r]) for r in refs]
    sums = rayr.get([total.remote([r]) for r in refs])
    assert sums == [float(i * BIG) for i in range(5)]
    nested = [rayr.get(make_inner.remote())[0] for _ in range(3)]
    assert all(rayr.get(n).sum() == BIG for n in nested)
    hexes = [r.hex() for r in refs]
    del refs, holders, nested, sums
    assert all(_freed(h) for h in hexes)
    deadline = time.monotonic() + 10
    while _store_used() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _store_used() <= baseline


def test_every_record_of_a_burst_of_puts_is_deleted_once_freed(ray):
    """Frees go out while a burst's puts may still be buffered: a record's delete must not
    overtake the write of that record (it would be written after and kept until the job ends)."""
    hexes = []
    for i in range(3000):
        ref = rayr.put(i)
        assert rayr.get(ref) == i
        hexes.append(ref.hex())
        del ref
    left = _outliving(hexes)
    assert not left, f"{len(left)} of {len(hexes)} records outlived their refs"


@rayr.remote
def small(i):
    return i


def test_freed_small_records_are_deleted_in_batches_between_inbox_reads(ray):
    """Between inbox batches (a sync call's get) deletes go out at most every FREES_EVERY_S,
    not one write per call; a full flush (urgent frees, shutdown) sends them all."""
    core = context.require_core()
    r, keys = core.gcs.r, core.keys
    first, second = rayr.put("first"), rayr.put("second")
    hexes = [first.hex(), second.hex()]
    core.objects._frees_due = time.monotonic() + 600  # a batch just went out
    try:
        del first
        gc.collect()
        core.objects.drain_released()
        core.objects.flush_deletes(due_only=True)  # not due yet: kept back
        core.commands.flush()
        assert r.exists(keys.object(hexes[0])), "deleted before its batch was due"
        del second
        gc.collect()
        core.objects.drain_released()
        core.objects.flush_deletes()
        core.commands.flush()
        assert not r.exists(keys.object(hexes[0])) and not r.exists(keys.object(hexes[1]))
    finally:
        core.objects._frees_due = 0.0


def test_a_loop_of_sync_calls_leaves_no_result_behind(ray):
    """Each sync call frees the last one's small result; with deletes batched none is left."""
    hexes = []
    for i in range(300):
        ref = small.remote(i)
        assert rayr.get(ref) == i
        hexes.append(ref.hex())
        del ref
    left = _outliving(hexes)
    assert not left, f"{len(left)} of {len(hexes)} results outlived their refs"


def test_a_free_waits_for_the_puts_another_thread_took_to_store(ray, monkeypatch):
    """The flusher took a burst of held puts and has not sent them yet when their refs die:
    the frees' DEL must wait for that send, or the records are written after it and stay."""
    core = context.require_core()
    objects = core.objects
    store_puts = objects._store_puts
    taken, sent = threading.Event(), threading.Event()

    def slow_from_another_thread(puts, held=False):
        late = held and threading.current_thread() is not threading.main_thread()
        if late:
            taken.set()
            time.sleep(0.5)  # taken, not yet sent
        store_puts(puts, held)
        if late:
            sent.set()

    monkeypatch.setattr(objects, "_store_puts", slow_from_another_thread)
    refs = [rayr.put(f"value {i}") for i in range(20)]
    hexes = [ref.hex() for ref in refs]
    assert taken.wait(30), "the flusher never took the held puts"
    del refs
    gc.collect()
    objects.drain_released()
    objects.flush_deletes()
    assert sent.wait(30)
    core.commands.flush()  # the stores and the deletes have run, in whatever order they went
    monkeypatch.undo()
    left = _outliving(hexes)
    assert not left, f"{len(left)} of {len(hexes)} records were written after their delete"
