"""Objects as files, mapped by every reader on the node; the base of ``shm`` and ``mmap``.

An object is written to ``<dir>/<namespace>-<hex>.tmp`` and renamed on ``seal``, so a reader
either sees a complete object or none. ``get`` maps the file read-only: the view (and numpy
arrays built on it) shares pages with every other process on the node.

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

import mmap
import os
import shutil
import time
import uuid
from collections import OrderedDict

from rayr.exceptions import ObjectStoreFullError
from rayr.object_store.base import BackendOptions, ObjectExistsError, ObjectStoreBackend, StoreUsage

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
POOL_MIN_BYTES = 1 << 20
POOL_MAX_FILES = 16  # pooled files kept at most; beyond this deleted objects are unlinked
# A process keeps the mappings of the large objects it read last: mapping is cheap, but the
# first touch of each page and the unmap that drops a touched mapping are not (~10 ms and
# ~5 ms per 100 MB here), and a worker often reads the same object task after task.
MAPPED_MAX_BYTES = 2 << 30
MAPPED_MAX_OBJECTS = 32


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
        self._writing: dict[bytes, mmap.mmap | None] = {}
        # object id -> (mapping, inode) of recently read large objects; see MAPPED_MAX_BYTES
        self._mapped: OrderedDict[bytes, tuple[mmap.mmap, int]] = OrderedDict()
        self._mapped_bytes = 0

    # ----------------------------------------------------------------- paths
    def _path(self, object_id: bytes, tmp: bool = False) -> str:
        suffix = ".tmp" if tmp else ""
        return os.path.join(self._dir, f"{self._prefix}{object_id.hex()}{suffix}")

    def _spilled_path(self, object_id: bytes) -> str | None:
        if not self._spill:
            return None
        return os.path.join(self._spill, f"{self._prefix}{object_id.hex()}")

    # ------------------------------------------------------------- contract
    def create(self, object_id: bytes, size: int) -> memoryview:
        if object_id in self._writing or self.contains(object_id):
            raise ObjectExistsError(object_id.hex())
        self.make_room(size)
        tmp = self._path(object_id, tmp=True)
        reused = size >= POOL_MIN_BYTES and self._take_pooled(size, tmp)
        open_flags = os.O_RDWR if reused else os.O_RDWR | os.O_CREAT | os.O_EXCL
        fd = os.open(tmp, open_flags, 0o600)
        try:
            os.ftruncate(fd, size)
            # mmap cannot map zero bytes; an empty object is just an empty file
            # large objects: map populated, so the pages are faulted in by the kernel in one go
            # (or, for a pooled file, just wired up) instead of one fault per page while copying
            flags = mmap.MAP_SHARED | (_POPULATE if size >= POOL_MIN_BYTES else 0)
            mapping = mmap.mmap(fd, size, flags=flags) if size else None
        finally:
            os.close(fd)
        self._writing[object_id] = mapping
        return memoryview(mapping) if mapping is not None else memoryview(bytearray())

    def seal(self, object_id: bytes) -> None:
        mapping = self._writing.pop(object_id)
        if mapping is not None:
            mapping.close()
        os.rename(self._path(object_id, tmp=True), self._path(object_id))

    def abort(self, object_id: bytes) -> None:
        mapping = self._writing.pop(object_id, None)
        if mapping is not None:
            mapping.close()
        try:
            os.unlink(self._path(object_id, tmp=True))
        except FileNotFoundError:
            pass

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
        entries = self._entries(self._dir)
        used = sum(_size(e) for e in entries)
        pooled = self._entries(self._dir, pooled=True)
        if used + size + sum(_size(e) for e in pooled) <= capacity:
            return
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
        """Move one object to the spill directory; the bytes freed (0 if it vanished)."""
        assert self._spill is not None
        target = os.path.join(self._spill, entry.name)
        partial = f"{target}.{os.getpid()}.tmp"
        try:
            size = _size(entry)
            shutil.copyfile(entry.path, partial)
            os.rename(partial, target)  # complete before the original goes
            os.unlink(entry.path)
            return size
        except FileNotFoundError:  # deleted (or spilled by someone else) meanwhile
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            return 0

    def _restore(self, object_id: bytes, spilled: str, size: int) -> None:
        """Bring a spilled object back into the primary directory if it fits without spilling."""
        capacity = self.options.capacity
        if capacity is not None and sum(_size(e) for e in self._entries(self._dir)) + size > capacity:
            return
        partial = self._path(object_id, tmp=True) + f".{os.getpid()}"
        try:
            shutil.copyfile(spilled, partial)
            os.rename(partial, self._path(object_id))
            os.unlink(spilled)
        except FileNotFoundError:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return time.time()
