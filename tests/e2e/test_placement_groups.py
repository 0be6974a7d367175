"""Placement groups on a two-node cluster."""

from __future__ import annotations

import time

import pytest

import rayr
from rayr.cli.status import collect
from rayr.testing import Cluster
from rayr.util.placement_group import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from rayr.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@pytest.fixture(scope="module")
def two_nodes(redis_url):
    c = Cluster(redis_url)
    nodes = [c.add_node(num_cpus=2), c.add_node(num_cpus=2)]
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c, nodes
    rayr.shutdown()
    c.shutdown()


@rayr.remote
def where():
    return rayr.get_runtime_context().get_node_id()


def _free_cpus(expected: float, timeout: float = 5.0) -> float:
    deadline = time.time() + timeout
    value = rayr.available_resources().get("CPU", 0.0)
    while value != expected and time.time() < deadline:
        time.sleep(0.05)
        value = rayr.available_resources().get("CPU", 0.0)
    return value


@pytest.mark.parametrize(
    "strategy, distinct",
    [("STRICT_SPREAD", 2), ("STRICT_PACK", 1), ("PACK", 1), ("SPREAD", 2)],
)
def test_strategies_place_bundles(two_nodes, strategy, distinct):
    _, nodes = two_nodes
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert rayr.get(pg.ready(), timeout=10) is True
    assert pg.id.hex() == pg.id and bytes.fromhex(pg.id.hex()) == pg.id.binary()  # Ray's id methods
    table = placement_group_table(pg)
    assert table["state"] == "CREATED" and table["strategy"] == strategy
    placed = list(table["bundles_to_node_id"].values())
    assert len(set(placed)) == distinct and set(placed) <= set(nodes)
    ran_on = [rayr.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote())
              for i in range(2)]
    assert ran_on == placed
    remove_placement_group(pg)
    assert _free_cpus(4.0) == 4.0


def test_bundles_hold_resources_until_removed(two_nodes):
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    assert pg.wait(10)
    assert _free_cpus(2.0) == 2.0
    # tasks of the group use the bundle; any-bundle index -1 works too
    strategy = PlacementGroupSchedulingStrategy(pg, -1)
    assert len(rayr.get([where.options(scheduling_strategy=strategy).remote() for _ in range(4)])) == 4
    remove_placement_group(pg)
    assert _free_cpus(4.0) == 4.0


def test_actor_in_a_bundle(two_nodes):
    pg = placement_group([{"CPU": 1}], strategy="PACK")
    assert pg.wait(10)
    node = placement_group_table(pg)["bundles_to_node_id"][0]

    @rayr.remote(num_cpus=1)
    class Where:
        def node(self):
            return rayr.get_runtime_context().get_node_id()

    actor = Where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    assert rayr.get(actor.node.remote(), timeout=30) == node
    rayr.kill(actor)
    remove_placement_group(pg)


def test_infeasible_group_stays_pending_and_shows_in_status(two_nodes):
    cluster, _ = two_nodes
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(1.0) is False
    deadline = time.time() + 5
    demand = []
    while not demand and time.time() < deadline:
        status = collect(cluster._local.gcs())
        demand = [d for d in status["demands"] if d.get("placement_group") == pg.id and not d["feasible"]]
        time.sleep(0.1)
    assert demand, "an infeasible group should be listed as an infeasible demand"
    assert placement_group_table(pg)["state"] == "PENDING"
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_group_waits_for_room_then_places(two_nodes):
    blocker = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="SPREAD")
    assert blocker.wait(10)
    waiting = placement_group([{"CPU": 1}], strategy="PACK")
    assert waiting.wait(0.5) is False
    remove_placement_group(blocker)
    assert waiting.wait(10)
    remove_placement_group(waiting)


def test_names_and_bad_input(two_nodes):
    pg = placement_group([{"CPU": 1}], name="named-pg")
    assert get_placement_group("named-pg") == pg
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="named-pg")
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="named-pg"):
        get_placement_group("named-pg")
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="EVERYWHERE")
    with pytest.raises(ValueError, match="bundle 0"):
        placement_group([{}])
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="bundle_index"):
        PlacementGroupSchedulingStrategy(pg, 5)
    assert rayr.util.placement_group is placement_group


@rayr.remote(num_cpus=1)
def child_info(depth):
    from rayr.util import get_current_placement_group

    pg = get_current_placement_group()
    below = rayr.get(child_info.remote(depth - 1)) if depth else None
    return pg, rayr.get_runtime_context().get_placement_group_id(), below


def test_children_are_captured_into_a_group_that_holds_every_cpu(two_nodes):
    # the group holds all four CPUs: a child scheduled outside it could never run
    pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="SPREAD")
    assert pg.wait(30)
    try:
        assert _free_cpus(0.0) == 0.0
        captured = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        ref = child_info.options(scheduling_strategy=captured).remote(2)
        ready, _ = rayr.wait([ref], timeout=120)
        assert ready, "a child of a captured task never ran inside the group"
        level = rayr.get(ref)
        for _ in range(3):  # the task, its child and grandchild: all in the group
            seen_pg, seen_id, below = level
            assert seen_pg == pg and seen_id == pg.id and seen_pg.bundle_count == 2
            level = below
        assert level is None

        @rayr.remote(num_cpus=0)
        def outside():
            return rayr.get(child_info.options(num_cpus=0).remote(0))

        # without capture the child is in no group (0 CPUs, so it fits outside the group)
        plain = PlacementGroupSchedulingStrategy(pg)
        seen_pg, seen_id, _ = rayr.get(outside.options(scheduling_strategy=plain).remote())
        assert seen_pg is None and seen_id is None
        assert rayr.util.get_current_placement_group() is None  # the driver is in none
    finally:
        remove_placement_group(pg)


def test_an_actor_captures_what_its_methods_start(two_nodes):
    pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="SPREAD")
    assert pg.wait(30)
    try:
        @rayr.remote(num_cpus=1)
        class Parent:
            def spawn(self):
                return rayr.get(child_info.remote(0))

            def group(self):
                ctx = rayr.get_runtime_context()
                return ctx.get_placement_group_id(), ctx.should_capture_child_tasks_in_placement_group

        parent = Parent.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)).remote()
        assert rayr.get(parent.group.remote()) == (pg.id, True)
        seen_pg, _, _ = rayr.get(parent.spawn.remote(), timeout=120)
        assert seen_pg == pg
        rayr.kill(parent)
    finally:
        remove_placement_group(pg)
