"""Scheduling strategies, by Ray's names: pass one as ``scheduling_strategy=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``get_runtime_context().get_node_id()`` gives).

    With ``soft=False`` the task waits for that node (and fails at submission if it is not
    alive); with ``soft=True`` it runs there when the node is alive with the resources free,
    and anywhere else otherwise.
    """

    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"NodeAffinitySchedulingStrategy needs a node id (hex), got {self.node_id!r}")


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run in a placement group's reserved resources: in bundle ``placement_group_bundle_index``,
    or in any of its bundles with -1 (the default). With ``placement_group_capture_child_tasks``
    the tasks and actors it starts (with no strategy of their own) run in the group too;
    ``placement_group=None`` runs outside any group, even under a capturing parent."""

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self) -> None:
        if self.placement_group is None:
            return
        pg_hex = getattr(self.placement_group, "id", None)
        if not isinstance(pg_hex, str):
            raise ValueError(
                f"PlacementGroupSchedulingStrategy needs a PlacementGroup, got {self.placement_group!r}"
            )
        count = len(getattr(self.placement_group, "bundle_specs", []))
        index = self.placement_group_bundle_index
        if not isinstance(index, int) or index < -1 or index >= count:
            raise ValueError(
                f"placement_group_bundle_index must be -1 or in [0, {count}), got {index!r}"
            )


class GroupRef(NamedTuple):
    """The group a captured child runs in, known by id alone (the parent's spec names it)."""

    id: str
    bundle_specs: tuple = ()


__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
