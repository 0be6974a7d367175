"""Placement groups: reserve bundles of resources together, then run tasks and actors in them.

    python examples/placement_groups.py
"""

from __future__ import annotations

import rayr as ray
from rayr.util import placement_group, placement_group_table, remove_placement_group
from rayr.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=1)
def where() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=1)
class Trainer:
    def step(self, i: int) -> str:
        return f"step {i} done"


def main() -> None:
    ray.init(num_cpus=4)

    # two 1-CPU bundles; PACK puts them on as few nodes as possible (one node here).
    # SPREAD, STRICT_PACK and STRICT_SPREAD are the other strategies.
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    ray.get(pg.ready())  # resolves once every bundle is reserved
    print("placement group state:", placement_group_table(pg)["state"])

    in_bundle = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
    node = ray.get(where.options(scheduling_strategy=in_bundle).remote())
    print("task ran in bundle 0:", node == ray.get_runtime_context().get_node_id())

    trainer = Trainer.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=1)).remote()
    print("actor in bundle 1:", ray.get(trainer.step.remote(1)))

    # the bundles hold 2 of the 4 CPUs until the group is removed
    ray.kill(trainer)
    remove_placement_group(pg)
    print("placement group removed")
    ray.shutdown()


if __name__ == "__main__":
    main()
