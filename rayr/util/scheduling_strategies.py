"""Ray's import path for scheduling strategies (``ray.util.scheduling_strategies``)."""

from __future__ import annotations

from rayr.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
