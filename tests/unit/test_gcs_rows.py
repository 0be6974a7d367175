"""Typed GCS rows and the rules written once on them."""

from __future__ import annotations

import pytest

from rayr.gcs.rows import ActorInfo, ActorState, NodeInfo, NodeState


@pytest.mark.parametrize("restarts, max_restarts, may", [(0, 0, False), (0, 1, True), (1, 1, False),
                                                          (5, -1, True)])
def test_the_actor_restart_rule(restarts, max_restarts, may):
    row = {"state": "ALIVE", "class_name": "A", "node": "n", "restarts": str(restarts),
           "max_restarts": str(max_restarts), "creation_spec": b"spec"}
    info = ActorInfo.from_hash("a" * 32, row)
    assert info.state is ActorState.ALIVE and info.creation_spec == b"spec"
    assert info.may_restart() is may


def _as_redis_returns(row: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in row.items()}


def test_a_node_row_round_trips_through_its_hash():
    node = NodeInfo(
        "ab" * 14, host="10.0.0.2", hostname="h2", pid=4321, is_head=True,
        resources_total={"CPU": 4.0, "GPU": 1.0}, resources_available={"CPU": 2.5},
        store_backend="shm", store_namespace="rayr-x", store_options={"capacity": 1 << 30},
        store_usage={"used_bytes": 7}, session_dir="/tmp/s", start_time=1700000000.25,
    )
    back = NodeInfo.from_hash(_as_redis_returns(node.to_hash()))
    assert back == node and back.alive
    dead = NodeInfo.from_hash(_as_redis_returns(
        {**node.to_hash(), "state": "DEAD", "end_time": "1700000100.5", "death_reason": "heartbeat"}))
    assert not dead.alive and dead.state == NodeState.DEAD and dead.end_time == 1700000100.5


def test_a_sparse_node_row_reads_with_defaults():
    node = NodeInfo.from_hash({b"node_id": b"cd" * 14})
    assert node.state == NodeState.DEAD  # a row without a state is not trusted to be alive
    assert node.resources_total == {} and node.pid == 0 and not node.is_head and node.end_time is None
