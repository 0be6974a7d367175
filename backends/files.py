"""Objects as files, mapped by every reader on the node; the base of ``shm`` and ``mmap``.

An object is written to ``<dir>/<namespace>-<hex>.<pid>.tmp`` and renamed on ``seal``, so a
reader either sees a complete object or none (the writer's pid in the name: a writer that died
mid-write never blocks the retry). ``get`` maps the file read-only: the view (and numpy arrays
built on it) shares pages with every other process on the node.

Every new file's blocks are reserved (``posix_fallocate``) before it is mapped: on a tmpfs
that other processes filled, touching an unreserved page of a mapping kills the writer with
SIGBUS, where the reservation fails with ENOSPC. Then the writer makes room on that
filesystem (drops the pool, reclaims dead nodes' files, spills its least recently used
objects) and tries again, and failing that writes the new object straight into the spill
directory; only when that is full too does ``create`` raise ObjectStoreFullError. Copies
(spilling, restoring) reserve their target first as well.

With a ``capacity``, a writer that would overflow it first *spills* the least recently used
objects: each is copied into ``spill_directory`` (complete under a temporary name, then
renamed) and only then removed from the primary directory, so any reader finds it in one
place or the other; views handed out earlier stay valid. ``get`` of a spilled object maps it
from the spill directory (the page cache serves it) and, when there is room, restores it.
Only when even spilling cannot make room does ``create`` raise ObjectStoreFullError.

Fresh pages of a new file are slow to touch (first-touch faults run near 1 GB/s here,
against ~10 GB/s for a copy into memory already mapped), so a deleted object of
``POOL_MIN_BYTES`` or more is not unlinked but renamed into a pool (``<namespace>-pool-...``)
that the next ``create`` of a similar size takes over, pages and all. Pooled files are the
first thing dropped when room is needed.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator

from rayr.exceptions import ObjectStoreFullError
from rayr.object_store.base import BackendOptions, ObjectExistsError, ObjectStoreBackend, StoreUsage
from rayr.object_store.orphans import reclaim_orphans, remove_file

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
POOL_MIN_BYTES = 1 << 20
POOL_MAX_FILES = 16  # pooled files kept at most; beyond this deleted objects are unlinked
# A process keeps the mappings of the large objects it read last: mapping is cheap, but the
# first touch of each page and the unmap that drops a touched mapping are not (~10 ms and
# ~5 ms per 100 MB here), and a worker often reads the same object task after task.
MAPPED_MAX_BYTES = 2 << 30
MAPPED_MAX_OBJECTS = 32
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
RECOUNT_MIN_S = 0.002  # make_room trusts its last count of the store this long at least...
RECOUNT_COST_FACTOR = 20  # ... or this many times what that count took


class _NoSpace(Exception):
    """The filesystem had no room for a file (nothing was left behind)."""


class FileOptions(BackendOptions):
    directory: str = "/dev/shm"
    # bytes the primary directory may hold; None: unlimited (no spilling)
    capacity: int | None = None
    # where objects go when the primary directory is full; None: never spill
    spill_directory: str | None = None


class FileBackend(ObjectStoreBackend):
    """Objects as files in one directory, spilled to another past ``capacity``."""

    name = "files"
    Options = FileOptions
    options: FileOptions

    def __init__(self, namespace: str, options: dict | BackendOptions | None = None):
        super().__init__(namespace, options)
        self._dir = self.options.directory
        if not os.path.isdir(self._dir):
            raise ValueError(
                f"{self.name} backend: directory {self._dir!r} does not exist; set the "
                "'directory' option to an existing directory"
            )
        self._spill = self.options.spill_directory
        if self._spill:
            os.makedirs(self._spill, exist_ok=True)
        self._prefix = f"{namespace}-"
        self._pool_prefix = f"{namespace}-pool-"
        # object id -> (mapping, temporary path, path on seal) of objects being written
        self._writing: dict[bytes, tuple[mmap.mmap | None, str, str]] = {}
        # object id -> (mapping, inode) of recently read large objects; see MAPPED_MAX_BYTES
        self._mapped: OrderedDict[bytes, tuple[mmap.mmap, int]] = OrderedDict()
        self._mapped_bytes = 0
        # (when, bytes then held plus what we created since, what the count cost): see make_room
        self._counted: tuple[float, int, float] | None = None

    def directories(self) -> list[str]:
        return [d for d in (self._dir, self._spill) if d]

    # ----------------------------------------------------------------- paths
    def _path(self, object_id: bytes) -> str:
        return os.path.join(self._dir, f"{self._prefix}{object_id.hex()}")

    @staticmethod
    def _tmp_path(directory: str, name: str) -> str:
        # one name per writing process: a writer that died leaves a file that blocks nobody
        # (cleanup() of its job or node removes it); the pid also keeps concurrent writers of
        # one object (a task run twice) off each other's file
        return os.path.join(directory, f"{name}.{os.getpid()}.tmp")

    def _spilled_path(self, object_id: bytes) -> str | None:
        if not self._spill:
            return None
        return os.path.join(self._spill, f"{self._prefix}{object_id.hex()}")

    # ------------------------------------------------------------- contract
    def create(self, object_id: bytes, size: int) -> memoryview:
        if object_id in self._writing or self.contains(object_id):
            raise ObjectExistsError(object_id.hex())
        self.make_room(size)
        name = f"{self._prefix}{object_id.hex()}"
        tmp = self._tmp_path(self._dir, name)
        directory = self._dir
        try:
            reused = size >= POOL_MIN_BYTES and self._take_pooled(size, tmp)
            mapping = self._allocate(tmp, size, reused)
        except _NoSpace:
            # the filesystem is fuller than our capacity says: other processes filled it
            self._make_filesystem_room(size)
            try:
                mapping = self._allocate(tmp, size, False)
            except _NoSpace:
                if not self._spill:
                    raise self._no_room_error(size) from None
                directory, tmp = self._spill, self._tmp_path(self._spill, name)
                try:  # a spilled object is read from there like any other
                    mapping = self._allocate(tmp, size, False)
                except _NoSpace:
                    raise self._no_room_error(size) from None
        self._writing[object_id] = (mapping, tmp, os.path.join(directory, name))
        return memoryview(mapping) if mapping is not None else memoryview(bytearray())

    @staticmethod
    def _allocate(tmp: str, size: int, reused: bool) -> mmap.mmap | None:
        """Map ``tmp`` (new, or a pooled file already renamed there) with ``size`` bytes reserved.

        Raises:
            _NoSpace: its filesystem has no room; the file is gone.
        """
        try:
            fd = os.open(tmp, os.O_RDWR if reused else os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # left by a dead writer whose pid we inherited
            remove_file(tmp)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with _nothing_left_on_failure(tmp):
                had = os.fstat(fd).st_size if reused else 0
                os.ftruncate(fd, size)
                if size > had:  # a pooled file already has its blocks, up to its old size
                    os.posix_fallocate(fd, had, size - had)
                # mmap cannot map zero bytes; an empty object is just an empty file
                # large objects: map populated, so the pages are faulted in by the kernel in one
                # go (or, for a pooled file, just wired up) instead of one fault per page while
                # copying
                flags = mmap.MAP_SHARED | (_POPULATE if size >= POOL_MIN_BYTES else 0)
                return mmap.mmap(fd, size, flags=flags) if size else None
        finally:
            os.close(fd)

    def _make_filesystem_room(self, size: int) -> None:
        """Free room for ``size`` bytes on the primary directory's filesystem, as far as we can."""
        self._drop_pool()
        reclaim_orphans([self._dir])  # files of dead nodes
        if not self._spill or _same_filesystem(self._dir, self._spill):
            return  # spilling would free nothing there
        for entry in sorted(self._entries(self._dir), key=_mtime):
            if _free_bytes(self._dir) >= size:
                return
            try:
                self.spill(entry)
            except ObjectStoreFullError:
                return  # the spill directory is full too

    def _no_room_error(self, size: int) -> ObjectStoreFullError:
        spill = (
            f", nor in the spill directory {self._spill} ({_free_bytes(self._spill)} bytes free)"
            if self._spill else "; spilling is off"
        )
        return ObjectStoreFullError(
            f"No room for an object of {size} bytes in {self._dir} ({_free_bytes(self._dir)} "
            f"bytes free, though the object store is within its capacity: other files fill "
            f"that filesystem){spill}. Free space there, or start the node with a smaller "
            "object_store_memory or a larger object_spilling_directory."
        )

    def seal(self, object_id: bytes) -> None:
        mapping, tmp, path = self._writing.pop(object_id)
        if mapping is not None:
            mapping.close()
        os.rename(tmp, path)

    def abort(self, object_id: bytes) -> None:
        writing = self._writing.pop(object_id, None)
        if writing is None:
            return
        mapping, tmp, _ = writing
        if mapping is not None:
            mapping.close()
        remove_file(tmp)

    def get(self, object_id: bytes) -> memoryview | None:
        path = self._path(object_id)
        cached = self._mapped.get(object_id)
        if cached is not None:
            # same path and inode: still the same sealed object (ids are never reused, and a
            # deleted object's file leaves this path before its pages can be reused)
            try:
                if os.stat(path).st_ino == cached[1]:
                    self._mapped.move_to_end(object_id)
                    os.utime(path)
                    return memoryview(cached[0])  # a view of its own: callers may release it
            except FileNotFoundError:
                pass
            self._forget(object_id)
        view = self._map(path, self)
        if view is None:
            spilled = self._spilled_path(object_id)
            if spilled is None:
                return None
            view = self._map(spilled)
            if view is not None:
                self._restore(object_id, spilled, view.nbytes)
            return view
        try:
            os.utime(path)  # recently used: spilled last
        except FileNotFoundError:
            pass
        return view

    @staticmethod
    def _map(path: str, keeper: FileBackend | None = None) -> memoryview | None:
        """Map ``path`` read-only; a large object's mapping is kept by ``keeper``."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size == 0:
                return memoryview(b"")
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if keeper is not None and POOL_MIN_BYTES <= st.st_size <= MAPPED_MAX_BYTES:
            keeper._keep(os.path.basename(path), mapping, st.st_ino)
        return memoryview(mapping)

    def _keep(self, name: str, mapping: mmap.mmap, inode: int) -> None:
        object_id = bytes.fromhex(name[len(self._prefix):])
        self.trim_mappings()
        self._mapped[object_id] = (mapping, inode)
        self._mapped_bytes += len(mapping)
        while self._mapped_bytes > MAPPED_MAX_BYTES or len(self._mapped) > MAPPED_MAX_OBJECTS:
            self._forget(next(iter(self._mapped)))

    def _forget(self, object_id: bytes) -> None:
        mapping, _ = self._mapped.pop(object_id)
        self._mapped_bytes -= len(mapping)

    def trim_mappings(self) -> None:
        """Drop kept mappings of objects that were deleted, so their pages can be freed."""
        for object_id, (_, inode) in list(self._mapped.items()):
            try:
                if os.stat(self._path(object_id)).st_ino == inode:
                    continue
            except FileNotFoundError:
                pass
            self._forget(object_id)

    def contains(self, object_id: bytes) -> bool:
        spilled = self._spilled_path(object_id)
        return os.path.exists(self._path(object_id)) or bool(spilled and os.path.exists(spilled))

    def delete(self, object_id: bytes) -> bool:
        if object_id in self._mapped:
            self._forget(object_id)
        found = self._pool(self._path(object_id))
        for path in (self._path(object_id), self._spilled_path(object_id)):
            if path is None:
                continue
            try:
                os.unlink(path)
                found = True
            except FileNotFoundError:
                pass
        return found

    def _entries(self, directory: str | None, pooled: bool = False) -> list[os.DirEntry]:
        """Sealed objects (or, with ``pooled``, the pool's files) of this namespace."""
        if not directory:
            return []
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(self._prefix) and not e.name.endswith(".tmp")]
        except FileNotFoundError:
            return []
        return [e for e in entries if e.name.startswith(self._pool_prefix) == pooled]

    # ------------------------------------------------------------------ pool
    def _pool(self, path: str) -> bool:
        """Keep a deleted object's file (and its faulted pages) for reuse; False if not pooled."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return False
        if size < POOL_MIN_BYTES or len(self._entries(self._dir, pooled=True)) >= POOL_MAX_FILES:
            return False
        target = os.path.join(self._dir, f"{self._pool_prefix}{size:016d}-{uuid.uuid4().hex}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return False
        return True

    def _take_pooled(self, size: int, tmp: str) -> bool:
        """Claim the smallest pooled file that holds ``size`` bytes (at most twice as big)."""
        candidates = sorted(
            (e for e in self._entries(self._dir, pooled=True) if size <= _size(e) <= 2 * size),
            key=_size,
        )
        for entry in candidates:
            try:
                os.rename(entry.path, tmp)  # atomic: of two takers, one wins
                return True
            except FileNotFoundError:
                continue
        return False

    def _drop_pool(self) -> None:
        for entry in self._entries(self._dir, pooled=True):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def usage(self) -> StoreUsage:
        sealed = self._entries(self._dir)
        spilled = self._entries(self._spill)
        return StoreUsage(
            used_bytes=sum(_size(e) for e in sealed),
            num_objects=len(sealed),
            spilled_bytes=sum(_size(e) for e in spilled),
            spilled_objects=len(spilled),
            capacity=self.options.capacity,
        )

    def cleanup(self, id_prefix: bytes = b"") -> None:
        for oid in [o for o in self._writing if o.startswith(id_prefix)]:
            self.abort(oid)
        # the prefix also matches writes that died midway, ``<name>.<pid>.tmp``
        wanted = self._prefix + id_prefix.hex()
        for directory in (self._dir, self._spill):
            if not directory:
                continue
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(wanted):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass

    # -------------------------------------------------------------- spilling
    def make_room(self, size: int) -> None:
        """Spill least-recently-used objects until ``size`` more bytes fit.

        Raises:
            ObjectStoreFullError: the object cannot fit even with everything spilled.
        """
        capacity = self.options.capacity
        if capacity is None:
            return
        if size > capacity:
            raise ObjectStoreFullError(
                f"An object of {size} bytes is larger than the whole object store "
                f"({capacity} bytes). Start the node with a larger object_store_memory."
            )
        # Counting what the store holds means a stat per object, so a put per object made a
        # burst of puts quadratic (64 tasks x 64 returns: 20 s). Between counts we add what we
        # create ourselves and count again only when that says "full" or once the last count
        # is old next to what it cost (<= ~5% of the time): others' puts in that window can
        # overshoot the (soft) capacity by what they wrote; a full filesystem is still handled.
        now = time.monotonic()
        if self._counted is not None:
            at, counted, cost = self._counted
            if now - at < max(RECOUNT_MIN_S, RECOUNT_COST_FACTOR * cost) and counted + size <= capacity:
                self._counted = (at, counted + size, cost)
                return
        entries = self._entries(self._dir)
        used = sum(_size(e) for e in entries)
        pooled = self._entries(self._dir, pooled=True)
        pooled_bytes = sum(_size(e) for e in pooled)
        counted_at = time.monotonic()
        self._counted = (counted_at, used + pooled_bytes + size, counted_at - now)
        if used + size + pooled_bytes <= capacity:
            return
        self._counted = None  # what follows frees or spills: count again next time
        self._drop_pool()  # reusable memory is the cheapest thing to give up
        if used + size <= capacity:
            return
        if not self._spill:
            raise ObjectStoreFullError(
                f"The object store is full: {used} of {capacity} bytes used and {size} more "
                "needed, and spilling is off. Free objects (drop their refs), raise "
                "object_store_memory, or set object_spilling_directory."
            )
        for entry in sorted(entries, key=_mtime):
            if used + size <= capacity:
                return
            used -= self.spill(entry) or 0
        if used + size > capacity:
            raise ObjectStoreFullError(
                f"The object store is full: {used} of {capacity} bytes are still used after "
                f"spilling and {size} more are needed. Raise object_store_memory."
            )

    def spill(self, entry: os.DirEntry) -> int:
        """Move one object to the spill directory; the bytes freed (0 if it vanished).

        Raises:
            ObjectStoreFullError: the spill directory has no room (the object stays put).
        """
        assert self._spill is not None
        try:
            size = self._copy(entry.path, self._spill, entry.name)  # complete before the original goes
        except FileNotFoundError:  # deleted (or spilled by someone else) meanwhile
            return 0
        except _NoSpace:
            raise ObjectStoreFullError(
                f"Cannot spill {entry.path} ({_size(entry)} bytes): the spill directory "
                f"{self._spill} is full ({_free_bytes(self._spill)} bytes free). Free space "
                "there or set object_spilling_directory to a larger disk."
            ) from None
        try:
            os.unlink(entry.path)
        except FileNotFoundError:  # deleted while we copied: its copy must not outlive it
            remove_file(os.path.join(self._spill, entry.name))
            return 0
        return size

    def _restore(self, object_id: bytes, spilled: str, size: int) -> None:
        """Bring a spilled object back into the primary directory if it fits without spilling."""
        capacity = self.options.capacity
        if capacity is not None and sum(_size(e) for e in self._entries(self._dir)) + size > capacity:
            return
        try:
            self._copy(spilled, self._dir, os.path.basename(self._path(object_id)))
        except (FileNotFoundError, _NoSpace):  # deleted meanwhile, or no room: it stays spilled
            return
        remove_file(spilled)

    def _copy(self, source: str, directory: str, name: str) -> int:
        """Copy ``source`` to ``directory/name``, complete under a temporary name, its blocks
        reserved first (a copy onto a full tmpfs fails at once instead of midway); the size.

        Raises:
            FileNotFoundError: ``source`` is gone.
            _NoSpace: the target's filesystem has no room; nothing is left behind.
        """
        tmp = self._tmp_path(directory, name)
        with open(source, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with _nothing_left_on_failure(tmp):
                    if size:
                        os.posix_fallocate(fd, 0, size)
                    copied = 0
                    while copied < size:
                        sent = os.sendfile(fd, src.fileno(), copied, size - copied)
                        if sent == 0:
                            break
                        copied += sent
            finally:
                os.close(fd)
        os.rename(tmp, os.path.join(directory, name))
        return size


@contextlib.contextmanager
def _nothing_left_on_failure(tmp: str) -> Iterator[None]:
    """Remove ``tmp`` if the block fails; a full filesystem surfaces as _NoSpace."""
    try:
        yield
    except BaseException as err:
        remove_file(tmp)
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            raise _NoSpace from err
        raise


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def _free_bytes(directory: str) -> int:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _same_filesystem(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return time.time()
