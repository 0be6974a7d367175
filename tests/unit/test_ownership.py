"""Reference counting and ownership without Redis: ``OwnershipTable`` driven the way the core
worker drives it (records arriving, refs created and dropped, holders letting go)."""

from __future__ import annotations

import concurrent.futures

from rayr.core.ownership import FLUSH_AT, OwnershipTable
from rayr.gcs import records as rec

US, OTHER = "aa" * 14, "bb" * 14
TASK = b"\x01" * 16
INLINE = rec.value_record(b"frame")
STORED = rec.stored_record("cc" * 14, 1 << 20)


def oid(index: int, task: bytes = TASK) -> bytes:
    return task + index.to_bytes(4, "big")


def drop(table: OwnershipTable, *oids: bytes) -> tuple[list[bytes], bool]:
    for o in oids:
        table.release(o)
    return table.drain_released()


def test_a_ref_dropped_before_its_result_frees_the_result_when_it_arrives():
    t = OwnershipTable(US)
    r = oid(1)
    t.own_returns([r])
    t.add_ref(r)
    freed, _ = drop(t, r)
    assert freed == [r] and r in t.freed_pending and not t.to_delete
    t.accept(r, STORED)
    assert r not in t.records and t.to_delete == [(r, STORED)]
    frees = t.take_frees()
    assert frees.delete_local == [r] and frees.delete_records == [r] and not frees.held
    assert not t.to_delete and not t.freed_pending


def test_a_ref_counted_twice_is_freed_on_the_second_drop_only():
    t = OwnershipTable(US)
    r = oid(0)
    t.own_put(r, INLINE)
    t.add_ref(r)
    t.add_ref(r)
    assert drop(t, r) == ([], False) and r in t.records
    freed, urgent = drop(t, r)
    assert freed == [r] and not urgent  # inline: no memory worth having back at once
    assert t.take_frees().delete_records == [r]


def test_a_stored_object_freed_asks_for_an_immediate_flush():
    t = OwnershipTable(US)
    r = oid(0)
    t.own_put(r, STORED)
    t.add_ref(r)
    assert drop(t, r) == ([r], True)


def test_many_small_frees_flush_in_batches():
    t = OwnershipTable(US)
    ids = [oid(0, bytes([i % 256, i // 256]) * 8) for i in range(FLUSH_AT)]
    for r in ids:
        t.own_put(r, INLINE)
        t.add_ref(r)
    _, urgent = drop(t, *ids[:-1])
    assert not urgent
    _, urgent = drop(t, ids[-1])
    assert urgent


def test_borrow_then_release():
    t = OwnershipTable(US)
    r = oid(1)
    assert not t.borrow(r, US)  # our own object: no borrowing
    assert not t.borrow(r, "")  # owner unknown (a ref made here): nothing to register
    assert t.borrow(r, OTHER)
    assert not t.borrow(r, OTHER)  # registered once however often it is unpickled
    t.add_ref(r)
    t.add_ref(r)
    assert drop(t, r) == ([], False) and not t.releases
    freed, urgent = drop(t, r)
    assert freed == [] and urgent  # not ours to free, but the owner must hear at once
    frees = t.take_frees()
    assert frees.releases == [(r, US, OTHER)] and not frees.delete_records
    assert r not in t.borrowed


def test_a_shared_object_is_freed_only_once_its_last_holder_lets_go():
    t = OwnershipTable(US)
    r = oid(0)
    t.own_put(r, INLINE)
    t.add_ref(r)
    t.mark_shared(r)
    drop(t, r)
    frees = t.take_frees()
    assert frees.held == [(r, False)] and not frees.delete_records  # freed in Redis, not here
    assert t.freed_in_redis(frees.held, [0]) == []  # a borrower still holds it
    assert r in t.shared
    t.on_holders_gone(r)  # message F: the last borrower let go
    frees = t.take_frees()
    assert frees.held == [(r, False)]
    assert t.freed_in_redis(frees.held, [1]) == [r] and r not in t.shared


def test_holders_gone_while_we_still_hold_a_ref_frees_nothing():
    t = OwnershipTable(US)
    r = oid(0)
    t.own_put(r, INLINE)
    t.add_ref(r)
    t.mark_shared(r)
    t.on_holders_gone(r)
    assert not t.to_delete and not t.take_frees()


def test_marking_shared_applies_only_to_objects_we_own():
    t = OwnershipTable(US)
    t.add_ref(oid(1))
    t.mark_shared(oid(1))
    assert not t.shared


def test_a_container_is_freed_in_redis_releasing_its_contents():
    t = OwnershipTable(US)
    c = oid(0)
    t.own_put(c, STORED)
    t.add_container(c)
    t.add_ref(c)
    drop(t, c)
    frees = t.take_frees()
    # ours alone: its copy here goes at once; Redis frees it and releases what it holds
    assert frees.held == [(c, True)] and frees.delete_local == [c] and not frees.delete_records
    assert c not in t.containers


def test_stream_items_arriving_before_any_ref_are_kept_then_freed_unread():
    t = OwnershipTable(US)
    t.own_returns([oid(1)], stream_task=TASK)
    for i in (2, 3, 4):
        assert t.accept(oid(i), INLINE) is None
    assert {oid(2), oid(3), oid(4)} <= t.owned and oid(3) in t.records
    t.add_ref(oid(3))  # the consumer took item 3 ...
    t.forget_stream(TASK, first_unread=3)  # ... and then dropped the generator
    assert oid(3) in t.records  # still referenced
    assert [o for o, _ in t.to_delete] == [oid(4)]  # never read: freed
    assert oid(2) in t.records  # read before (first_unread is 3): its ref holder decides
    t.accept(oid(5), INLINE)  # a late item of a forgotten stream is not kept
    assert oid(5) not in t.records and oid(5) not in t.owned


def test_the_first_record_of_a_referenced_object_wins():
    t = OwnershipTable(US)
    r = oid(1)
    t.add_ref(r)
    t.accept(r, rec.error_record(b"actor died"))
    t.accept(r, INLINE)  # the call finished after all: too late
    assert t.records[r] == rec.error_record(b"actor died")


def test_a_record_for_an_object_nobody_counts_is_dropped():
    t = OwnershipTable(US)
    t.accept(oid(7), INLINE)
    assert not t.records and not t.to_delete


def test_awaited_records_resolve_their_futures():
    t = OwnershipTable(US)
    r = oid(1)
    t.own_returns([r])
    t.add_ref(r)
    fut: concurrent.futures.Future = concurrent.futures.Future()
    assert t.await_record(r, object(), fut) is None
    assert t.accept(r, INLINE) == [(fut, INLINE)]
    assert r not in t.futures
    assert t.await_record(r, object(), concurrent.futures.Future()) == INLINE


def test_watching_asks_once_and_files_what_the_table_held():
    t = OwnershipTable(US)
    a, b, pending = oid(1, b"\x02" * 16), oid(1, b"\x03" * 16), oid(1)
    t.own_returns([pending])
    t.add_ref(a)
    t.add_ref(b)
    assert t.to_watch([a, b, pending]) == [a, b]  # our own pending result needs no watching
    assert t.to_watch([a, b]) == []
    t.watched([a, b], [INLINE, None])
    assert t.records == {a: INLINE} and t.watching == {b}
    t.accept(b, STORED)
    assert t.records[b] == STORED and not t.watching


def test_a_failed_put_reads_as_its_error():
    t = OwnershipTable(US)
    r = oid(0)
    t.own_put(r, INLINE)
    t.fail_put(r, rec.error_record(b"x"))
    assert t.records[r] == rec.error_record(b"x")
    t.fail_put(oid(0, b"\x09" * 16), rec.error_record(b"x"))  # freed meanwhile: nothing to do
    assert len(t.records) == 1


def test_a_rerun_puts_owned_outputs_back_to_pending():
    t = OwnershipTable(US)
    r1, r2 = oid(1), oid(2)
    t.own_returns([r1, r2])
    t.add_ref(r1)
    t.add_ref(r2)
    t.accept(r1, STORED)
    t.accept(r2, INLINE)
    assert t.stored_output([r1, r2])
    drop(t, r1)
    assert not t.stored_output([r1, r2])  # the stored one is no longer referenced
    assert t.prepare_rerun([r1, r2]) == [r2]
    assert r2 in t.pending and r2 not in t.records
