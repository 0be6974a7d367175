"""ObjectRef: a 20-byte object id plus the inbox of the process that owns the object."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any, Generic, TypeVar

from rayr import context
from rayr.serialization import note_serialized_ref

# the value's type; covariant, since a ref is read-only: an ObjectRef[bool] is an ObjectRef[int]
T_co = TypeVar("T_co", covariant=True)


class ObjectRef(Generic[T_co]):
    """A reference to a (possibly future) object in the cluster.

    ``ObjectRef[T]`` is the ref of a value of type ``T`` (``f.remote()`` of a function
    returning ``T``; ``rayr.get`` of it is a ``T``). The parameter is for type checkers only:
    ``Generic`` adds no per-instance state (its ``__slots__`` is empty).

    Refs are counted per process: creating one registers it with the process's core
    worker. Pickling a ref (nested in an argument, inside another object) marks it as
    shared; a process that unpickles a ref it does not own registers as a borrower with
    the owner (in Redis), and an object that contains refs holds them. The owner frees an
    object when its own refs, the tasks it passed the object to, its borrowers and the
    objects containing it are all gone.
    """

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id: bytes, owner: str = "") -> None:
        self._id = object_id
        self._owner = owner
        core = context.state.core
        if core is not None:
            core.add_local_ref(object_id, owner)

    @classmethod
    def _counted(cls, object_id: bytes, owner: str) -> ObjectRef[Any]:
        """A ref whose count the caller has already taken (under the core's lock, with the
        rest of a submission's bookkeeping), so making it takes no lock of its own."""
        ref = cls.__new__(cls)
        ref._id = object_id
        ref._owner = owner
        return ref

    def __del__(self) -> None:
        core = context.state.core
        if core is not None:
            core.release_local_ref(self._id)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:16]

    def owner_address(self) -> str:
        """The inbox name of the owning process."""
        return self._owner

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        note_serialized_ref(self)
        core = context.state.core
        if core is not None:
            core.mark_shared(self._id)
        return (_rebuild, (self._id, self._owner))

    def future(self) -> concurrent.futures.Future[T_co]:
        """A concurrent.futures.Future resolved with the object's value (or error)."""
        return context.require_core().future_of(self)

    def __await__(self) -> Generator[Any, None, T_co]:
        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(object_id: bytes, owner: str) -> ObjectRef[Any]:
    """Unpickle a ref: counted here, and registered as borrowed if another process owns it."""
    ref: ObjectRef[Any] = ObjectRef(object_id, owner)
    core = context.state.core
    if core is not None:
        core.on_deserialized(object_id, owner)
    return ref
