"""Find object-store backends by name: built-ins first, then the entry-point group.

Built-ins are listed as lazy ``"module:Class"`` strings so naming a backend imports only
that backend. Third parties register under the ``rayr.object_stores`` entry-point group;
they may not silently replace a built-in.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from rayr.object_store.base import ObjectStoreBackend

ENTRY_POINT_GROUP = "rayr.object_stores"

BUILTIN_BACKENDS: dict[str, str] = {
    "shm": "rayr.backends.shm:ShmBackend",
    "mmap": "rayr.backends.mmap_spill:MmapBackend",
    "memory": "rayr.backends.memory:MemoryBackend",
}


def _load(target: str) -> type[ObjectStoreBackend]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, ObjectStoreBackend)):
        raise TypeError(f"{target} is not an ObjectStoreBackend subclass")
    return cls


def available_backends() -> list[str]:
    """Names of all backends: built-ins and installed third-party ones."""
    names = set(BUILTIN_BACKENDS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_backend_class(name: str) -> type[ObjectStoreBackend]:
    """The backend class registered as ``name``.

    Raises:
        ValueError: no backend has that name (the message lists the known ones).
    """
    if name in BUILTIN_BACKENDS:
        return _load(BUILTIN_BACKENDS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, ObjectStoreBackend)):
                raise TypeError(f"entry point {ep.value!r} is not an ObjectStoreBackend subclass")
            return cls
    known = available_backends()
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"Unknown object store backend {name!r}.{did_you_mean} Known backends: {', '.join(known)}."
    )


def open_backend(
    name: str, namespace: str, options: dict[str, Any] | None = None
) -> ObjectStoreBackend:
    """Open (a view of) the node store ``namespace`` with backend ``name``."""
    return get_backend_class(name)(namespace, options)
