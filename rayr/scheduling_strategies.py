"""Scheduling strategies, by Ray's names: pass one as ``scheduling_strategy=``."""

from __future__ import annotations

from dataclasses import dataclass


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


__all__ = ["NodeAffinitySchedulingStrategy"]
