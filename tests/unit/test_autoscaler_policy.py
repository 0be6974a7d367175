"""The autoscaler's pure decision function: launches and terminations from a given state."""

from __future__ import annotations

from rayr.autoscaler.policy import Limits, NodeState, NodeType, decide

TYPES = {
    "cpu": NodeType("cpu", {"CPU": 2}, min_workers=0, max_workers=4),
    "gpu": NodeType("gpu", {"CPU": 4, "GPU": 1}, min_workers=0, max_workers=2),
    "special": NodeType("special", {"CPU": 1, "special": 1}, min_workers=0, max_workers=3),
}
HEAD = NodeState("head", "head", is_head=True, total={"CPU": 2}, available={"CPU": 0})
LIMITS = Limits(max_workers=10, upscaling_speed=1.0, idle_timeout_s=60)


def test_nothing_to_do_on_an_idle_cluster() -> None:
    assert not decide(TYPES, LIMITS, [HEAD], [], [], now=0)


def test_min_workers_are_launched_and_capped_by_max_workers() -> None:
    types = {**TYPES, "cpu": NodeType("cpu", {"CPU": 2}, min_workers=3, max_workers=4)}
    assert decide(types, LIMITS, [HEAD], [], [], now=0).launch == {"cpu": 3}
    assert decide(types, Limits(max_workers=2), [HEAD], [], [], now=0).launch == {"cpu": 2}
    one = NodeState("a", "cpu", pending=True)
    assert decide(types, LIMITS, [HEAD, one], [], [], now=0).launch == {"cpu": 2}


def test_demand_for_a_custom_resource_launches_that_type_only() -> None:
    decision = decide(TYPES, LIMITS, [HEAD], [{"CPU": 1, "special": 1}] * 2, [], now=0)
    assert decision.launch == {"special": 2}


def test_demand_packs_into_few_nodes_and_prefers_types_without_unasked_resources() -> None:
    # 4 one-CPU tasks fit in two 2-CPU nodes; the GPU type is not used for CPU work
    decision = decide(TYPES, LIMITS, [HEAD], [{"CPU": 1}] * 4, [], now=0)
    assert decision.launch == {"cpu": 2}
    assert decide(TYPES, LIMITS, [HEAD], [{"GPU": 1}], [], now=0).launch == {"gpu": 1}


def test_demand_that_fits_free_room_or_starting_nodes_launches_nothing() -> None:
    free = NodeState("a", "cpu", total={"CPU": 2}, available={"CPU": 2})
    assert not decide(TYPES, LIMITS, [HEAD, free], [{"CPU": 1}] * 2, [], now=0)
    starting = NodeState("b", "cpu", pending=True)
    assert not decide(TYPES, LIMITS, [HEAD, starting], [{"CPU": 1}] * 2, [], now=0)
    assert decide(TYPES, LIMITS, [HEAD, starting], [{"CPU": 1}] * 3, [], now=0).launch == {"cpu": 1}


def test_per_type_and_cluster_max_workers_cap_launches() -> None:
    decision = decide(TYPES, LIMITS, [HEAD], [{"CPU": 1, "special": 1}] * 10, [], now=0)
    assert decision.launch == {"special": 3}
    decision = decide(TYPES, Limits(max_workers=1), [HEAD], [{"CPU": 1, "special": 1}] * 10, [], now=0)
    assert decision.launch == {"special": 1}


def test_upscaling_speed_limits_launches_in_flight() -> None:
    types = {"cpu": NodeType("cpu", {"CPU": 1}, max_workers=100)}
    limits = Limits(max_workers=100, upscaling_speed=1.0)
    # a head alone may still start MIN_CONCURRENT_LAUNCHES (5) nodes at once
    assert decide(types, limits, [HEAD], [{"CPU": 1}] * 50, [], now=0).launch == {"cpu": 5}
    running = [NodeState(f"n{i}", "cpu", total={"CPU": 1}, available={}) for i in range(9)]
    # 10 nodes running at speed 1.0: up to 10 in flight
    assert decide(types, limits, [HEAD, *running], [{"CPU": 1}] * 50, [], now=0).launch == {"cpu": 10}
    faster = Limits(max_workers=100, upscaling_speed=2.0)
    assert decide(types, faster, [HEAD, *running], [{"CPU": 1}] * 50, [], now=0).launch == {"cpu": 20}
    pending = [NodeState(f"p{i}", "cpu", pending=True) for i in range(4)]
    # 4 already in flight (and they absorb 4 tasks): one more
    assert decide(types, limits, [HEAD, *pending], [{"CPU": 1}] * 50, [], now=0).launch == {"cpu": 1}


def test_infeasible_demand_is_reported_not_launched() -> None:
    decision = decide(TYPES, LIMITS, [HEAD], [{"TPU": 1}], [], now=0)
    assert decision.launch == {} and decision.infeasible == [{"TPU": 1}]


def test_idle_nodes_terminate_after_the_timeout_but_not_below_min_workers() -> None:
    idle = [NodeState(f"n{i}", "cpu", total={"CPU": 2}, available={"CPU": 2}, idle_since=0) for i in range(3)]
    assert not decide(TYPES, LIMITS, [HEAD, *idle], [], [], now=59)
    assert sorted(i for i, _ in decide(TYPES, LIMITS, [HEAD, *idle], [], [], now=60).terminate) == [
        "n0", "n1", "n2"]
    types = {**TYPES, "cpu": NodeType("cpu", {"CPU": 2}, min_workers=2, max_workers=4)}
    assert len(decide(types, LIMITS, [HEAD, *idle], [], [], now=60).terminate) == 1


def test_nodes_in_use_busy_or_starting_are_never_terminated_for_idleness() -> None:
    nodes = [
        HEAD,
        NodeState("busy", "cpu", available={"CPU": 1}, idle_since=None),
        NodeState("holds", "cpu", available={"CPU": 2}, idle_since=0, in_use=True),
        NodeState("starting", "cpu", pending=True, idle_since=0),
    ]
    assert decide(TYPES, LIMITS, nodes, [], [], now=1000).terminate == []


def test_request_resources_launches_at_once_and_keeps_nodes_it_needs() -> None:
    decision = decide(TYPES, Limits(max_workers=10, upscaling_speed=0.01), [HEAD], [],
                      [{"CPU": 2}] * 4, now=0)
    # the head holds one bundle, three 2-CPU nodes the rest
    assert decision.launch == {"cpu": 3}
    idle = [NodeState(f"n{i}", "cpu", total={"CPU": 2}, available={"CPU": 2}, idle_since=0) for i in range(2)]
    decision = decide(TYPES, LIMITS, [HEAD, *idle], [], [{"CPU": 2}] * 2, now=1000)
    assert [i for i, _ in decision.terminate] == ["n0"]


def test_nodes_of_removed_types_or_over_max_are_terminated() -> None:
    nodes = [HEAD, NodeState("old", "gone"), *[NodeState(f"c{i}", "cpu") for i in range(5)]]
    decision = decide(TYPES, LIMITS, nodes, [], [], now=0)
    assert {i for i, _ in decision.terminate} >= {"old"}
    assert len(decision.terminate) == 2 and "max_workers" in decision.terminate[1][1]


def test_status_shows_pending_launches_and_recent_actions() -> None:
    from rayr.cli.status import render

    data = {
        "time": 0.0, "active": [{"node_id": "h", "host": "127.0.0.1", "is_head": True}], "failures": [],
        "total": {"CPU": 1.0}, "available": {"CPU": 1.0}, "demands": [],
        "autoscaler": {"time": 0.0, "pending": [{"id": "a", "type": "gpu"}, {"id": "b", "type": "gpu"}],
                       "workers": [{"id": "c", "type": "cpu"}], "infeasible": [{"TPU": 1.0}],
                       "recent": ["12:00:00 launching 2 node(s) of type gpu"]},
    }
    text = render(data)
    pending = text.split("Pending:\n")[1].split("Recent failures:")[0]
    assert pending == " gpu, launching\n gpu, launching\n"
    assert " workers: 1 cpu" in text and " launching: 2 node(s)" in text
    assert "no node type fits {'TPU': 1.0}" in text and "launching 2 node(s) of type gpu" in text
    assert "Autoscaler:" not in render({**data, "autoscaler": None})
