"""The contract every object-store backend fulfils.

A backend instance is a view of one node's store: every process on the node (raylet,
workers, driver) opens the backend with the same ``namespace`` and sees the same objects.
Objects are immutable once sealed. Processes on other nodes never open it; objects reach
them through transfers that the raylets drive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class BackendOptions(BaseModel):
    """Options common to every backend; backends subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid")


class ObjectExistsError(KeyError):
    """An object with this id was already created in the store."""


@dataclass(frozen=True)
class StoreUsage:
    """Bytes held and objects sealed in one node's store (and spilled out of it)."""

    used_bytes: int
    num_objects: int
    spilled_bytes: int = 0
    spilled_objects: int = 0
    capacity: int | None = None


class ObjectStoreBackend(ABC):
    """One node's local object store.

    Subclasses set ``name`` and ``Options`` (a pydantic model with ``extra="forbid"``, so a
    mistyped option fails when the node starts).
    """

    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, namespace: str, options: dict[str, Any] | BackendOptions | None = None):
        self.namespace = namespace
        if isinstance(options, BackendOptions):
            self.options = options
        else:
            self.options = self.Options.model_validate(options or {})

    @abstractmethod
    def create(self, object_id: bytes, size: int) -> memoryview:
        """A writable buffer of exactly ``size`` bytes for a new object (not yet visible).

        Raises:
            ObjectExistsError: the id was already created.
        """

    @abstractmethod
    def seal(self, object_id: bytes) -> None:
        """Make a created object visible, immutably, to ``get`` in every process of the node."""

    @abstractmethod
    def abort(self, object_id: bytes) -> None:
        """Discard an object that was created but will never be sealed (a failed write)."""

    @abstractmethod
    def get(self, object_id: bytes) -> memoryview | None:
        """A read-only, zero-copy view of a sealed object, or None when absent."""

    @abstractmethod
    def contains(self, object_id: bytes) -> bool:
        """Whether a sealed object is present."""

    @abstractmethod
    def delete(self, object_id: bytes) -> bool:
        """Remove an object (views already handed out stay valid); False if it was absent."""

    @abstractmethod
    def usage(self) -> StoreUsage:
        """What the store holds now."""

    @abstractmethod
    def cleanup(self, id_prefix: bytes = b"") -> None:
        """Remove every object whose id starts with ``id_prefix`` (all of them by default)."""

    def trim_mappings(self) -> None:
        """Release whatever this process keeps mapped of objects deleted since (optional)."""
        return None

    def directories(self) -> list[str]:
        """Directories holding this store's files, each named ``<namespace>-...`` (none for a
        store that is not files). The node's raylet marks its namespace as live in each (see
        ``orphans.py``), so the files of a raylet that died can be found and removed."""
        return []

    def put_bytes(self, object_id: bytes, writer: Any, size: int) -> None:
        """Create, fill through ``writer(buffer)`` and seal in one step (aborted if it fails)."""
        buf = self.create(object_id, size)
        try:
            writer(buf)
        except BaseException:
            buf.release()
            self.abort(object_id)
            raise
        buf.release()
        self.seal(object_id)
