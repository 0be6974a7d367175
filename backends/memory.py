"""In-process backend: objects in a dict. For tests and single-process use only."""

from __future__ import annotations

from rayr.object_store.base import ObjectExistsError, ObjectStoreBackend, StoreUsage


class MemoryBackend(ObjectStoreBackend):
    """A store visible only inside the process that opened it."""

    name = "memory"

    def __init__(self, namespace: str, options: dict | None = None):
        super().__init__(namespace, options)
        self._open: dict[bytes, bytearray] = {}
        self._sealed: dict[bytes, bytes] = {}

    def create(self, object_id: bytes, size: int) -> memoryview:
        if object_id in self._open or object_id in self._sealed:
            raise ObjectExistsError(object_id.hex())
        self._open[object_id] = bytearray(size)
        return memoryview(self._open[object_id])

    def seal(self, object_id: bytes) -> None:
        self._sealed[object_id] = bytes(self._open.pop(object_id))

    def abort(self, object_id: bytes) -> None:
        self._open.pop(object_id, None)

    def get(self, object_id: bytes) -> memoryview | None:
        data = self._sealed.get(object_id)
        return None if data is None else memoryview(data)

    def contains(self, object_id: bytes) -> bool:
        return object_id in self._sealed

    def delete(self, object_id: bytes) -> bool:
        return self._sealed.pop(object_id, None) is not None

    def usage(self) -> StoreUsage:
        return StoreUsage(sum(map(len, self._sealed.values())), len(self._sealed))

    def cleanup(self, id_prefix: bytes = b"") -> None:
        for table in (self._open, self._sealed):
            for oid in [o for o in table if o.startswith(id_prefix)]:
                del table[oid]
