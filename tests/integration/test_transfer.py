"""The chunked object transfer between nodes, against a real Redis (no raylets).

The holder's side runs in a thread here, started when the pull request shows up on its
node stream, the way the raylet's control thread would.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from rayr.exceptions import ObjectLostError
from rayr.gcs.client import connect
from rayr.keys import Keys
from rayr.object_store import transfer

OID = b"\x07" * 20


class ArrayStore:
    """Just enough of an object store for the sending side: ``get`` of one object."""

    def __init__(self, data: np.ndarray | None) -> None:
        self.data = data

    def get(self, oid: bytes) -> memoryview | None:
        return None if self.data is None else memoryview(self.data).cast("B")


def transfer_once(redis_url: str, data: np.ndarray | None, size: int) -> tuple[bytearray, Keys]:
    r = connect(redis_url)
    keys = Keys(f"xfer-{os.urandom(4).hex()}")
    r.hset(keys.node("holder"), "state", "ALIVE")
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            r.xread({keys.node_stream("holder"): "0"}, block=10_000, count=1)
            transfer.send_object(r, keys, ArrayStore(data), OID, "dest", size)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    out = bytearray(size)
    try:
        transfer.pull_object(r, r, keys, OID, "holder", "dest", memoryview(out))
    finally:
        thread.join(timeout=30)
    assert not errors, errors
    return out, keys


@pytest.mark.parametrize("compressible", [False, True])
def test_object_arrives_byte_for_byte_and_leaves_no_keys(redis_url, compressible):
    size = 3 * transfer.CHUNK + 12_345  # a short last chunk
    rng = np.random.default_rng(0)
    data = np.full(size, 5, dtype=np.uint8) if compressible else rng.integers(0, 255, size, dtype=np.uint8)
    data[::1000] = rng.integers(0, 255, len(data[::1000]), dtype=np.uint8)
    out, keys = transfer_once(redis_url, data, size)
    assert out == data.tobytes()
    r = connect(redis_url)
    assert r.keys(keys.transfer(OID.hex(), "dest") + "*") == []


def test_more_chunks_than_may_be_in_flight(redis_url, monkeypatch):
    monkeypatch.setattr(transfer, "CHUNK", 64 << 10)
    size = (transfer.MAX_IN_FLIGHT * 3 + 1) * transfer.CHUNK
    data = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8)
    out, _ = transfer_once(redis_url, data, size)
    assert out == data.tobytes()


def test_object_gone_from_holder_is_reported(redis_url):
    with pytest.raises(ObjectLostError, match="no longer in its node's store"):
        transfer_once(redis_url, None, 100)


def test_silent_holder_times_out(redis_url, monkeypatch):
    monkeypatch.setattr(transfer, "PULL_TIMEOUT_S", 1)
    r = connect(redis_url)
    keys = Keys(f"xfer-{os.urandom(4).hex()}")
    r.hset(keys.node("holder"), "state", "ALIVE")
    with pytest.raises(ObjectLostError, match="did not send it within 1s"):
        transfer.pull_object(r, r, keys, OID, "holder", "dest", memoryview(bytearray(10)))


def test_dead_holder_is_not_asked(redis_url):
    r = connect(redis_url)
    keys = Keys(f"xfer-{os.urandom(4).hex()}")
    r.hset(keys.node("holder"), "state", "DEAD")
    with pytest.raises(ObjectLostError, match="which is DEAD"):
        transfer.pull_object(r, r, keys, OID, "holder", "dest", memoryview(bytearray(10)))


def test_vanished_receiver_stops_the_sender(redis_url, monkeypatch):
    monkeypatch.setattr(transfer, "PULL_TIMEOUT_S", 1)
    monkeypatch.setattr(transfer, "CHUNK", 64 << 10)
    r = connect(redis_url)
    keys = Keys(f"xfer-{os.urandom(4).hex()}")
    size = (transfer.MAX_IN_FLIGHT + 2) * transfer.CHUNK
    data = np.zeros(size, dtype=np.uint8)
    with pytest.raises(ObjectLostError, match="stopped taking its chunks"):
        transfer.send_object(r, keys, ArrayStore(data), OID, "dest", size)
    key = keys.transfer(OID.hex(), "dest")
    assert 0 < r.pttl(key) <= transfer.KEY_TTL_MS  # what it left expires
    assert 0 < r.pttl(f"{key}:0") <= transfer.KEY_TTL_MS


class FullStore:
    """A receiving store with no room: ``create`` refuses every object."""

    def get(self, oid: bytes) -> memoryview | None:
        return None

    def create(self, oid: bytes, size: int) -> memoryview:
        raise MemoryError("no room for the object")


def test_a_receiver_that_cannot_make_room_stops_the_sender_at_once(redis_url, monkeypatch):
    """The pull is asked for before the receiver allocates (the sender starts meanwhile): when
    the allocation fails, the sender must hear it now, not after PULL_TIMEOUT_S."""
    monkeypatch.setattr(transfer, "CHUNK", 64 << 10)
    r = connect(redis_url)
    keys = Keys(f"xfer-{os.urandom(4).hex()}")
    r.hset(keys.node("holder"), "state", "ALIVE")
    size = (transfer.MAX_IN_FLIGHT + 4) * transfer.CHUNK
    data = np.ones(size, dtype=np.uint8)
    sent: list[BaseException | None] = []

    def holder() -> None:
        r.xread({keys.node_stream("holder"): "0"}, block=10_000, count=1)
        try:
            transfer.send_object(r, keys, ArrayStore(data), OID, "dest", size)
            sent.append(None)
        except BaseException as exc:
            sent.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    with pytest.raises(MemoryError):
        transfer.pull_into_store(r, r, keys, FullStore(), OID, "holder", size, "dest", "me")  # type: ignore[arg-type]
    thread.join(timeout=transfer.PULL_TIMEOUT_S / 2)
    assert not thread.is_alive(), "the sender still waits for acknowledgements"
    assert sent == [None]
