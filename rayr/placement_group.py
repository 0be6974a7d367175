"""Placement groups: resources reserved across nodes, as bundles, for tasks and actors.

Creating a group writes it to the placement-group table and pokes the head monitor, which
places its bundles (``rayr/gcs/placement.py``) and asks each chosen raylet to set them aside;
a task or actor then runs inside a bundle through ``PlacementGroupSchedulingStrategy``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from rayr import context
from rayr.gcs.placement import STRATEGIES, ready_object_id
from rayr.ids import PlacementGroupID
from rayr.object_ref import ObjectRef


class PlacementGroup:
    """A handle to a placement group; picklable, so tasks and actors can use it too."""

    def __init__(self, id: str, bundle_specs: list[dict[str, float]]) -> None:  # noqa: A002 (Ray's name)
        self.id = PlacementGroupID(id)
        self.bundle_specs = bundle_specs

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """A ref that resolves (to True) once every bundle is reserved."""
        return ObjectRef(ready_object_id(self.id))

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group got placed within ``timeout_seconds``."""
        ref = self.ready()  # held while waiting, so the record is kept when it arrives
        return bool(context.require_core().wait_ready([ref.binary()], 1, timeout_seconds))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id!s}, {len(self.bundle_specs)} bundles)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (str(self.id), self.bundle_specs))


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list) or not bundles:
        raise ValueError(f"bundles must be a non-empty list of resource dicts, got {bundles!r}")
    out = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(f"bundle {i} must be a non-empty dict like {{'CPU': 1}}, got {bundle!r}")
        clean = {}
        for name, amount in bundle.items():
            if (not isinstance(name, str) or isinstance(amount, bool)
                    or not isinstance(amount, int | float) or not 0 <= amount < math.inf):
                raise ValueError(f"bundle {i}: {name!r} must map to a finite number >= 0, got {amount!r}")
            if amount > 0:
                clean[name] = float(amount)
        if not clean:
            raise ValueError(f"bundle {i} asks for nothing: {bundle!r}")
        out.append(clean)
    return out


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
) -> PlacementGroup:
    """Reserve ``bundles`` of resources on the cluster with ``strategy``; returns at once.

    Raises:
        ValueError: bad bundles, an unknown strategy, or a name already in use.
    """
    specs = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    core = context.require_core()
    pg_hex = core.job_id.hex() + os.urandom(12).hex()
    created = core.gcs.create_placement_group(
        pg_hex,
        core.namespace,
        name,
        {
            "bundles": json.dumps(specs),
            "strategy": strategy,
            "name": name,
            "namespace": core.namespace,
            "detached": int(lifetime == "detached"),
            "state": "PENDING",
        },
    )
    if not created:
        raise ValueError(f"a placement group named {name!r} already exists in namespace {core.namespace!r}")
    return PlacementGroup(pg_hex, specs)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's reservations; tasks and actors waiting on it never run there."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(
            f"remove_placement_group() takes a PlacementGroup, got {type(placement_group).__name__}"
        )
    context.require_core().gcs.remove_placement_group(placement_group.id)


def get_placement_group(name: str, namespace: str | None = None) -> PlacementGroup:
    """The live placement group called ``name``.

    Raises:
        ValueError: no such group in the namespace.
    """
    core = context.require_core()
    ns = core.namespace if namespace is None else namespace
    info = core.gcs.named_placement_group(ns, name)
    if info is None:
        raise ValueError(f"Failed to look up placement group {name!r} in namespace {ns!r}")
    return PlacementGroup(info["pg_id"], json.loads(info["bundles"]))


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the running task or actor was scheduled in; None in a driver and
    outside groups."""
    core = context.state.core
    group = core.submitter.current_group()[0] if core is not None else ""
    if not group:
        return None
    info = core.gcs.placement_group_info(group) if core is not None else {}
    return PlacementGroup(group, json.loads(info.get("bundles", "[]")))


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """State of one group, or of all groups by id (Ray's ``placement_group_table``)."""
    gcs = context.require_core().gcs
    if placement_group is not None:
        return _table_row(gcs.placement_group_info(placement_group.id))
    return {row["placement_group_id"]: row for row in map(_table_row, gcs.placement_groups())}


def _table_row(info: dict[str, str]) -> dict[str, Any]:
    bundles = json.loads(info.get("bundles", "[]"))
    nodes = json.loads(info.get("bundle_nodes", "[]"))
    return {
        "placement_group_id": info.get("pg_id", ""),
        "name": info.get("name", ""),
        "bundles": dict(enumerate(bundles)),
        "bundles_to_node_id": dict(enumerate(nodes)),
        "strategy": info.get("strategy", ""),
        "state": info.get("state", ""),
    }
