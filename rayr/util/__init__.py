"""Ray's ``ray.util`` helpers."""

from __future__ import annotations

from typing import Any

from rayr import context
from rayr.util.actor_pool import ActorPool


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of live named actors in this job's namespace, or dicts of every namespace's."""
    core = context.require_core()
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in core.gcs.named_actors(None)]
    return [name for _, name in core.gcs.named_actors(core.namespace)]


__all__ = ["ActorPool", "list_named_actors"]
