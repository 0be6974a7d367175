"""Ray's ``ray.util`` helpers."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from rayr import context
from rayr.object_ref import ObjectRef
from rayr.util.actor_pool import ActorPool

# as in Ray, the functions shadow the submodule's name (``ray.util.placement_group(...)``)
from rayr.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of live named actors in this job's namespace, or dicts of every namespace's."""
    core = context.require_core()
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in core.gcs.named_actors(None)]
    return [name for _, name in core.gcs.named_actors(core.namespace)]


def progress(refs: Iterable[ObjectRef], **options: Any) -> Iterator[ObjectRef]:
    """Yield refs as they complete while a progress bar advances (see ``progress_bar``).

    tqdm is imported on first use, so ``import rayr`` stays fast.
    """
    from rayr.util.progress_bar import progress as show_progress

    return show_progress(refs, **options)


def __getattr__(name: str) -> ModuleType:
    # ``ray.util.queue.Queue`` and ``ray.util.multiprocessing.Pool`` work as attribute paths
    # after ``import rayr as ray``, without importing those modules for every program
    if name in ("queue", "multiprocessing", "scheduling_strategies", "accelerators"):
        return importlib.import_module(f"rayr.util.{name}")
    raise AttributeError(f"module 'rayr.util' has no attribute {name!r}")


__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "list_named_actors",
    "placement_group",
    "placement_group_table",
    "progress",
    "remove_placement_group",
]
