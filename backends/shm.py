"""POSIX shared-memory backend: one tmpfs file per object, mapped by every reader.

An object is written to ``<dir>/<namespace>-<hex>.tmp`` and renamed on ``seal``, so a
reader either sees a complete object or none. ``get`` maps the file read-only: the
returned view (and numpy arrays built on it) share physical pages with every other
process on the node. Deleting unlinks the file; existing mappings stay valid.
"""

from __future__ import annotations

import mmap
import os

from rayr.object_store.base import (
    BackendOptions,
    ObjectExistsError,
    ObjectStoreBackend,
    StoreUsage,
)


class ShmOptions(BackendOptions):
    directory: str = "/dev/shm"


class ShmBackend(ObjectStoreBackend):
    """Objects as files in a tmpfs directory (``/dev/shm`` by default)."""

    name = "shm"
    Options = ShmOptions
    options: ShmOptions

    def __init__(self, namespace: str, options: dict | BackendOptions | None = None):
        super().__init__(namespace, options)
        self._dir = self.options.directory
        if not os.path.isdir(self._dir):
            raise ValueError(
                f"shm backend: directory {self._dir!r} does not exist; set the 'directory' "
                "option to a tmpfs mount, or use the 'mmap' backend"
            )
        self._prefix = f"{namespace}-"
        self._writing: dict[bytes, mmap.mmap | None] = {}

    def _path(self, object_id: bytes, tmp: bool = False) -> str:
        suffix = ".tmp" if tmp else ""
        return os.path.join(self._dir, f"{self._prefix}{object_id.hex()}{suffix}")

    def create(self, object_id: bytes, size: int) -> memoryview:
        if object_id in self._writing or os.path.exists(self._path(object_id)):
            raise ObjectExistsError(object_id.hex())
        fd = os.open(self._path(object_id, tmp=True), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            # mmap cannot map zero bytes; an empty object is just an empty file
            mapping = mmap.mmap(fd, size) if size else None
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
        try:
            fd = os.open(self._path(object_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size == 0:
                return memoryview(b"")
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return memoryview(mapping)

    def contains(self, object_id: bytes) -> bool:
        return os.path.exists(self._path(object_id))

    def delete(self, object_id: bytes) -> bool:
        try:
            os.unlink(self._path(object_id))
            return True
        except FileNotFoundError:
            return False

    def _entries(self) -> list[os.DirEntry]:
        with os.scandir(self._dir) as it:
            return [e for e in it if e.name.startswith(self._prefix)]

    def usage(self) -> StoreUsage:
        sealed = [e for e in self._entries() if not e.name.endswith(".tmp")]
        return StoreUsage(sum(e.stat().st_size for e in sealed), len(sealed))

    def cleanup(self, id_prefix: bytes = b"") -> None:
        for oid in [o for o in self._writing if o.startswith(id_prefix)]:
            mapping = self._writing.pop(oid)
            if mapping is not None:
                mapping.close()
        wanted = self._prefix + id_prefix.hex()
        for entry in self._entries():
            if not entry.name.startswith(wanted):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
