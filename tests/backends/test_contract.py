"""One contract every object-store backend must meet; each backend runs all of it."""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os

import pytest

from rayr.object_store.base import ObjectExistsError, ObjectStoreBackend
from rayr.object_store.registry import available_backends, get_backend_class, open_backend

OID = bytes(range(20))
OID2 = bytes(range(1, 21))


@pytest.fixture(params=["shm", "mmap", "memory"])
def backend(request, tmp_path) -> ObjectStoreBackend:
    options = {"directory": str(tmp_path)} if request.param != "memory" else {}
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
    assert {"shm", "mmap", "memory"} <= set(available_backends())
    assert get_backend_class("shm").name == "shm"
    with pytest.raises(ValueError, match="Did you mean 'memory'"):
        get_backend_class("memroy")


def test_options_are_validated():
    with pytest.raises(ValueError, match="directry"):
        open_backend("shm", "ns", {"directry": "/tmp"})
    with pytest.raises(ValueError, match="does not exist"):
        open_backend("shm", "ns", {"directory": "/no/such/dir"})


@pytest.fixture(params=["shm", "mmap"])
def small_store(request, tmp_path) -> ObjectStoreBackend:
    primary = tmp_path / "primary"
    primary.mkdir()
    store = open_backend(request.param, "rayr-test-small", {
        "directory": str(primary), "capacity": 1000, "spill_directory": str(tmp_path / "spill"),
    })
    yield store
    store.cleanup()


def oid_n(n: int) -> bytes:
    return n.to_bytes(20, "big")


def test_spills_least_recently_used_and_reads_everything_back(small_store):
    import time as _time

    for n in range(6):  # 6 x 400 bytes into a 1000-byte store
        write(small_store, oid_n(n), bytes([n]) * 400)
        _time.sleep(0.01)  # distinct modification times: a clear LRU order
    usage = small_store.usage()
    assert usage.used_bytes <= 1000 and usage.spilled_objects >= 4
    assert usage.num_objects + usage.spilled_objects == 6
    assert not os.path.exists(small_store._path(oid_n(0)))  # the oldest went first
    for n in range(6):
        assert bytes(small_store.get(oid_n(n))) == bytes([n]) * 400
        assert small_store.contains(oid_n(n))
    assert small_store.delete(oid_n(0)) and not small_store.contains(oid_n(0))


def test_restores_a_spilled_object_when_there_is_room(small_store):
    write(small_store, oid_n(1), b"a" * 600)
    write(small_store, oid_n(2), b"b" * 600)  # spills object 1
    assert small_store.usage().spilled_objects == 1
    small_store.delete(oid_n(2))
    assert bytes(small_store.get(oid_n(1))) == b"a" * 600  # read from the spill dir...
    usage = small_store.usage()
    assert usage.num_objects == 1 and usage.spilled_objects == 0  # ...and brought back


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_a_burst_of_puts_does_not_count_the_store_each_time(name, tmp_path, monkeypatch):
    """Counting the store is a stat per object: counting it on every put made N puts cost
    N^2 stats (a shuffle's 4,096 parts took 20 s). Counts are reused while they are fresh;
    one that says "full" is made again, so the capacity still holds for this process."""
    store = open_backend(name, "rayr-test-burst", {"directory": str(tmp_path), "capacity": 1 << 30})
    counts = []
    real = store._entries

    def counting(*args, **kwargs):
        counts.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_entries", counting)
    # no count goes stale in this test (the module that defines make_room holds the setting)
    monkeypatch.setattr(inspect.getmodule(type(store).make_room), "RECOUNT_MIN_S", 3600.0)
    try:
        for n in range(2000):
            write(store, oid_n(n), b"x" * 100)
        assert len(counts) <= 4, len(counts)  # one count (objects, pool), not one per put
        assert store.usage().num_objects == 2000
    finally:
        store.cleanup()
    os.makedirs(tmp_path / "f", exist_ok=True)
    full = open_backend(name, "rayr-test-burst2", {"directory": str(tmp_path / "f"), "capacity": 1000})
    try:
        write(full, oid_n(1), b"x" * 800)
        from rayr.exceptions import ObjectStoreFullError

        with pytest.raises(ObjectStoreFullError):  # what this process wrote is counted
            full.create(oid_n(2), 400)
    finally:
        full.cleanup()


def test_full_without_spilling_says_what_to_do(tmp_path):
    from rayr.exceptions import ObjectStoreFullError

    store = open_backend("mmap", "rayr-test-full", {"directory": str(tmp_path), "capacity": 1000})
    write(store, oid_n(1), b"x" * 800)
    with pytest.raises(ObjectStoreFullError, match="object_spilling_directory"):
        store.create(oid_n(2), 400)
    with pytest.raises(ObjectStoreFullError, match="larger than the whole object store"):
        store.create(oid_n(3), 5000)
    assert bytes(store.get(oid_n(1))) == b"x" * 800  # nothing was lost
    store.cleanup()


def test_cleanup_removes_spilled_files(small_store):
    for n in range(4):
        write(small_store, oid_n(n), b"z" * 400)
    assert small_store.usage().spilled_objects > 0
    small_store.cleanup()
    assert small_store.usage().num_objects == 0 and small_store.usage().spilled_objects == 0


def test_deleted_large_objects_are_reused(tmp_path):
    from rayr.backends.files import POOL_MIN_BYTES

    store = open_backend("shm", "rayr-test-pool", {"directory": str(tmp_path)})
    size = POOL_MIN_BYTES * 2
    write(store, oid_n(1), b"a" * size)
    inode = os.stat(store._path(oid_n(1))).st_ino
    assert store.delete(oid_n(1)) and not store.contains(oid_n(1))
    assert store.usage().num_objects == 0  # pooled files are not objects
    write(store, oid_n(2), b"b" * (size - 10))
    assert os.stat(store._path(oid_n(2))).st_ino == inode  # same file, pages already touched
    assert bytes(store.get(oid_n(2))) == b"b" * (size - 10)
    write(store, oid_n(3), b"c" * 100)  # small objects never use the pool
    store.cleanup()
    assert os.listdir(tmp_path) == []


def test_pool_is_dropped_before_anything_spills(tmp_path):
    from rayr.backends.files import POOL_MIN_BYTES

    size = POOL_MIN_BYTES
    store = open_backend("mmap", "rayr-test-pool2", {
        "directory": str(tmp_path), "capacity": 3 * size, "spill_directory": str(tmp_path / "s"),
    })
    write(store, oid_n(1), b"1" * size)
    write(store, oid_n(2), b"2" * size)
    store.delete(oid_n(2))  # pooled
    write(store, oid_n(3), b"3" * (size // 4))  # too small to take the pooled file
    write(store, oid_n(4), b"4" * (2 * size - size // 4))  # needs the pool's memory
    assert store.usage().spilled_objects == 0
    assert bytes(store.get(oid_n(1))) == b"1" * size
    store.cleanup()


def test_large_objects_stay_mapped_only_while_they_exist(tmp_path):
    from rayr.backends.files import POOL_MIN_BYTES

    # two handles on one directory: one process reads, another deletes and writes
    reader = open_backend("shm", "rayr-test-keep", {"directory": str(tmp_path)})
    writer = open_backend("shm", "rayr-test-keep", {"directory": str(tmp_path)})
    size = POOL_MIN_BYTES * 2
    write(writer, oid_n(1), b"a" * size)
    first = reader.get(oid_n(1))
    assert len(reader._mapped) == 1
    first.release()  # a caller releasing its view must not break the next get
    assert bytes(reader.get(oid_n(1))) == b"a" * size
    writer.delete(oid_n(1))  # pooled: the next object of its size takes over the same file
    write(writer, oid_n(2), b"b" * size)
    assert reader.get(oid_n(1)) is None, "a deleted object must not be served from a kept mapping"
    assert bytes(reader.get(oid_n(2))) == b"b" * size
    assert list(reader._mapped) == [oid_n(2)]
    writer.delete(oid_n(2))
    reader.trim_mappings()  # what a worker does after each task
    assert reader._mapped_bytes == 0 and not reader._mapped
    writer.cleanup()


# ---------------------------------------------------------------- full filesystems
# A tmpfs that other files fill is fuller than the store's capacity says; the writer must get
# an error it can act on (or room made elsewhere), never SIGBUS, and no file may stay behind.
# These run in a private mount namespace (rayr.testing.run_with_tmpfs) with small tmpfs's.

MiB = 1 << 20

FULL_FS_SCRIPT = """
import json, os, sys
from rayr.exceptions import ObjectStoreFullError
from rayr.object_store.registry import open_backend

backend, primary, spill = {args}
store = open_backend(backend, "rayr-test-fullfs", {{
    "directory": primary, "capacity": 64 << 20, "spill_directory": spill or None,
}})
# another process fills the primary filesystem: 6 of its 8 MiB
with open(os.path.join(primary, "filler"), "wb") as f:
    f.write(b"f" * (6 << 20))
out = {{}}
oid, data = bytes(20), b"x" * (4 << 20)
try:
    buf = store.create(oid, len(data))
    buf[:] = data  # SIGBUS here without the space reserved
    buf.release()
    store.seal(oid)
    out["stored"] = bytes(store.get(oid)) == data
except ObjectStoreFullError as err:
    out["error"] = str(err)
out["files"] = sorted(os.listdir(primary)) + sorted(os.listdir(spill) if spill else [])
os.unlink(os.path.join(primary, "filler"))
store.delete(oid)
store.put_bytes(bytes(19) + b"\\1", lambda b: b.__setitem__(slice(None), data), len(data))
out["retry"] = bytes(store.get(bytes(19) + b"\\1")) == data
store.cleanup()
print(json.dumps(out))
"""


def _run_full_fs(backend: str, primary, spill, mounts: dict) -> dict:
    import json

    from rayr.testing import run_with_tmpfs

    args = repr((backend, str(primary), str(spill) if spill else ""))
    out = run_with_tmpfs(FULL_FS_SCRIPT.format(args=args), mounts)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout}{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_full_filesystem_without_spilling_raises_and_leaves_nothing(tmp_path, tmpfs_ok, name):
    primary = tmp_path / "primary"
    primary.mkdir()
    out = _run_full_fs(name, primary, None, {str(primary): 8 * MiB})
    assert "stored" not in out
    assert str(primary) in out["error"] and str(4 * MiB) in out["error"], out["error"]
    assert out["files"] == ["filler"], "no partial file may stay behind"
    assert out["retry"] is True


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_full_filesystem_writes_the_object_to_the_spill_directory(tmp_path, tmpfs_ok, name):
    primary, spill = tmp_path / "primary", tmp_path / "spill"
    primary.mkdir()
    out = _run_full_fs(name, primary, spill, {str(primary): 8 * MiB})
    assert out["stored"] is True
    assert out["files"] == ["filler", "rayr-test-fullfs-" + bytes(20).hex()]  # in the spill dir
    assert out["retry"] is True


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_full_filesystem_and_full_spill_directory_name_both(tmp_path, tmpfs_ok, name):
    primary, spill = tmp_path / "primary", tmp_path / "spill"
    primary.mkdir()
    spill.mkdir()
    out = _run_full_fs(name, primary, spill, {str(primary): 8 * MiB, str(spill): 2 * MiB})
    assert str(primary) in out["error"] and str(spill) in out["error"], out["error"]
    assert out["files"] == ["filler"]
    assert out["retry"] is True


SPILL_FULL_SCRIPT = """
import json, os, sys
from rayr.exceptions import ObjectStoreFullError
from rayr.object_store.registry import open_backend

backend, primary, spill = {args}
store = open_backend(backend, "rayr-test-spillfull", {{
    "directory": primary, "capacity": 3 << 20, "spill_directory": spill,
}})
out = {{"errors": []}}
for n in range(4):  # 2 MiB objects into a 3 MiB store spilling to a 3 MiB disk
    fill = lambda b: b.__setitem__(slice(None), bytes([n]) * len(b))
    try:
        store.put_bytes(n.to_bytes(20, "big"), fill, 2 << 20)
    except ObjectStoreFullError as err:
        out["errors"].append(str(err))
out["readable"] = [
    bytes(v[:1]) == bytes([n]) if (v := store.get(n.to_bytes(20, "big"))) is not None else None
    for n in range(4)
]
out["primary"] = sorted(os.listdir(primary))
out["spill"] = sorted(os.listdir(spill))
store.cleanup()
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_full_spill_directory_raises_and_keeps_the_object(tmp_path, tmpfs_ok, name):
    import json

    from rayr.testing import run_with_tmpfs

    primary, spill = tmp_path / "primary", tmp_path / "spill"
    primary.mkdir()
    spill.mkdir()
    args = repr((name, str(primary), str(spill)))
    out = run_with_tmpfs(SPILL_FULL_SCRIPT.format(args=args), {str(spill): 3 * MiB})
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout}{out.stderr}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # object 0 spilled; spilling object 1 for object 2 finds the spill disk full
    assert result["errors"], result
    assert all(f"spill directory {spill} is full" in e for e in result["errors"]), result["errors"]
    assert result["readable"][:2] == [True, True], "a failed spill keeps the object in the primary"
    assert not any(f.endswith(".tmp") for f in result["primary"] + result["spill"]), result
    assert len(result["spill"]) == 1


def _die_mid_write(directory: str) -> None:
    store = open_backend("shm", "rayr-test-dead", {"directory": directory})
    buf = store.create(OID, 4096)
    buf[:10] = b"half-done!"
    os._exit(0)  # as a SIGKILLed worker: nothing sealed, nothing cleaned


@pytest.mark.parametrize("name", ["shm", "mmap"])
def test_a_dead_writers_file_does_not_block_the_retry(tmp_path, name):
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=_die_mid_write, args=(str(tmp_path),))
    proc.start()
    proc.join()
    assert any(f.endswith(".tmp") for f in os.listdir(tmp_path)), "the dead writer left its file"
    store = open_backend(name, "rayr-test-dead", {"directory": str(tmp_path)})
    write(store, OID, b"retried")  # the task's retry writes the same object id
    assert bytes(store.get(OID)) == b"retried"
    store.cleanup()
    assert os.listdir(tmp_path) == [], "cleanup removes dead writers' files too"


def test_a_failed_write_leaves_nothing(backend, tmp_path):
    def fail(buf):
        raise RuntimeError("serialization failed midway")

    with pytest.raises(RuntimeError):
        backend.put_bytes(OID, fail, 1000)
    assert not backend.contains(OID)
    write(backend, OID, b"again")  # the id is free again
    assert bytes(backend.get(OID)) == b"again"
    backend.delete(OID)
    assert os.listdir(tmp_path) == []
