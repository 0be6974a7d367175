"""Moving an object between nodes through Redis.

The node that needs an object asks the node that holds it (a ``pull`` entry on the holder's
node stream); the holder's raylet pushes the object as chunks onto a Redis list that only
this transfer uses, and the receiver pops them straight into its own store. At most
``MAX_IN_FLIGHT`` chunks sit in Redis at once, so a large object never needs its size in
Redis memory, and sending overlaps receiving. Chunks are lz4-compressed when the first one
shows that compression pays.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import lz4.block

from rayr.exceptions import ObjectLostError
from rayr.keys import Keys
from rayr.object_store.base import ObjectStoreBackend

CHUNK = 4 << 20
MAX_IN_FLIGHT = 8
PULL_TIMEOUT_S = 60  # a holder that sends nothing for this long is taken to be gone
RAW = b"R"
LZ4 = b"Z"
FAILED = b"E"
_LEN = struct.Struct("<I")
_WORTH_IT = 0.8  # compress only if the first chunk shrinks below this fraction


def send_object(r: Any, keys: Keys, store: ObjectStoreBackend, oid: bytes, dest: str, size: int) -> None:
    """Push ``oid`` from this node's store to ``dest`` (run by the holder's raylet)."""
    key = keys.transfer(oid.hex(), dest)
    view = store.get(oid)
    if view is None:
        r.rpush(key, FAILED + b"the object is no longer in its node's store")
        r.expire(key, 120)
        return
    compress: bool | None = None
    try:
        for offset in range(0, size, CHUNK):
            chunk = view[offset : offset + CHUNK]
            message: bytes | bytearray | None = None
            if compress is not False:
                packed = lz4.block.compress(chunk, store_size=False)
                compress = len(packed) < _WORTH_IT * len(chunk)
                if compress:
                    message = LZ4 + _LEN.pack(len(chunk)) + packed
            if message is None:  # one copy, straight from the store's mapping
                message = bytearray(1 + len(chunk))
                message[0:1] = RAW
                message[1:] = chunk
            queued = r.rpush(key, message)
            if offset == 0:
                r.expire(key, 120)  # a receiver that vanished leaves nothing behind for long
            while queued >= MAX_IN_FLIGHT:
                time.sleep(0.0005)
                queued = r.llen(key)
    finally:
        view.release()


def pull_object(r: Any, keys: Keys, oid: bytes, holder: str, dest: str, out: memoryview) -> None:
    """Fill ``out`` with the object held by node ``holder`` (run by the process that needs it).

    Raises:
        ObjectLostError: the holder does not answer or no longer has the object.
    """
    key = keys.transfer(oid.hex(), dest)
    state = r.hget(keys.node(holder), "state")
    if state != b"ALIVE":
        raise ObjectLostError(oid.hex(), f"Its only copy was on node {holder[:12]}, which is "
                              f"{(state or b'unknown').decode()}.")
    r.delete(key)  # chunks of an earlier, abandoned pull must not be mixed in
    r.xadd(keys.node_stream(holder), {b"pull": oid.hex().encode(), b"dest": dest.encode(),
                                      b"size": str(out.nbytes).encode()})
    offset = 0
    while offset < out.nbytes:
        item = r.blpop([key], timeout=PULL_TIMEOUT_S)
        if item is None:
            raise ObjectLostError(oid.hex(), f"Node {holder[:12]} did not send it within {PULL_TIMEOUT_S}s.")
        data = item[1]
        kind = data[:1]
        if kind == FAILED:
            raise ObjectLostError(oid.hex(), f"Node {holder[:12]} could not send it: {data[1:].decode()}")
        if kind == LZ4:
            (length,) = _LEN.unpack_from(data, 1)
            chunk: bytes | memoryview = lz4.block.decompress(
                memoryview(data)[1 + _LEN.size :], uncompressed_size=length
            )
        else:
            chunk = memoryview(data)[1:]  # no copy until it lands in the store
        out[offset : offset + len(chunk)] = chunk
        offset += len(chunk)
    r.delete(key)


def pull_into_store(
    r: Any,
    keys: Keys,
    store: ObjectStoreBackend,
    oid: bytes,
    holder: str,
    size: int,
    node: str,
    puller: str,
) -> memoryview:
    """A local view of ``oid``, pulled from ``holder`` into ``store`` first if no one has yet.

    One process per node pulls (it holds the object's transfer lock); the others wait for
    the object to appear in the store.
    """
    lock = keys.transfer_lock(oid.hex(), node)
    deadline = time.monotonic() + PULL_TIMEOUT_S * 2
    while time.monotonic() < deadline:
        if r.set(lock, puller, nx=True, px=PULL_TIMEOUT_S * 2000):
            try:
                view = store.get(oid)  # another puller may have just finished
                if view is None:
                    buf = store.create(oid, size)
                    try:
                        pull_object(r, keys, oid, holder, node, buf)
                    except BaseException:
                        buf.release()
                        store.abort(oid)
                        raise
                    buf.release()
                    store.seal(oid)
                    view = store.get(oid)
                assert view is not None
                return view
            finally:
                r.delete(lock)
        while r.exists(lock) and time.monotonic() < deadline:  # someone here is pulling it
            view = store.get(oid)
            if view is not None:
                return view
            time.sleep(0.005)
        view = store.get(oid)
        if view is not None:
            return view
    raise ObjectLostError(oid.hex(), f"Pulling it from node {holder[:12]} did not finish in time.")

