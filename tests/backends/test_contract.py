"""One contract every object-store backend must meet; each backend runs all of it."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from rayr.object_store.base import ObjectExistsError, ObjectStoreBackend
from rayr.object_store.registry import available_backends, get_backend_class, open_backend

OID = bytes(range(20))
OID2 = bytes(range(1, 21))


@pytest.fixture(params=["shm", "memory"])
def backend(request, tmp_path) -> ObjectStoreBackend:
    options = {"directory": str(tmp_path)} if request.param == "shm" else {}
    store = open_backend(request.param, f"rayr-test-{request.param}", options)
    yield store
    store.cleanup()


def write(store: ObjectStoreBackend, oid: bytes, data: bytes) -> None:
    buf = store.create(oid, len(data))
    buf[:] = data
    buf.release()
    store.seal(oid)


def test_create_seal_get(backend):
    assert backend.get(OID) is None and not backend.contains(OID)
    buf = backend.create(OID, 5)
    assert backend.get(OID) is None, "unsealed objects are invisible"
    buf[:] = b"hello"
    buf.release()
    backend.seal(OID)
    view = backend.get(OID)
    assert bytes(view) == b"hello" and view.readonly
    assert backend.contains(OID)


def test_duplicate_create_rejected(backend):
    write(backend, OID, b"a")
    with pytest.raises(ObjectExistsError):
        backend.create(OID, 1)


def test_delete_and_usage(backend):
    write(backend, OID, b"x" * 100)
    write(backend, OID2, b"y" * 50)
    usage = backend.usage()
    assert usage.num_objects == 2 and usage.used_bytes == 150
    assert backend.delete(OID) is True
    assert backend.delete(OID) is False
    assert backend.usage().num_objects == 1


def test_zero_size_object(backend):
    write(backend, OID, b"")
    assert bytes(backend.get(OID)) == b""


def test_cleanup_by_prefix(backend):
    write(backend, OID, b"1")
    write(backend, OID2, b"2")
    backend.cleanup(OID[:4])
    assert not backend.contains(OID) and backend.contains(OID2)
    backend.cleanup()
    assert backend.usage().num_objects == 0


def test_views_survive_delete(backend):
    write(backend, OID, b"keep")
    view = backend.get(OID)
    backend.delete(OID)
    assert bytes(view) == b"keep"


def _reader(directory: str, queue) -> None:
    store = open_backend("shm", "rayr-test-shm", {"directory": directory})
    queue.put(bytes(store.get(OID)))


def test_shm_is_shared_across_processes(tmp_path):
    store = open_backend("shm", "rayr-test-shm", {"directory": str(tmp_path)})
    write(store, OID, b"across")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_reader, args=(str(tmp_path), queue))
    proc.start()
    assert queue.get(timeout=30) == b"across"
    proc.join()
    store.cleanup()


def test_registry():
    assert {"shm", "memory"} <= set(available_backends())
    assert get_backend_class("shm").name == "shm"
    with pytest.raises(ValueError, match="Did you mean 'memory'"):
        get_backend_class("memroy")


def test_options_are_validated():
    with pytest.raises(ValueError, match="directry"):
        open_backend("shm", "ns", {"directry": "/tmp"})
    with pytest.raises(ValueError, match="does not exist"):
        open_backend("shm", "ns", {"directory": "/no/such/dir"})
