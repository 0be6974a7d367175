"""Typed GCS rows and the rules written once on them."""

from __future__ import annotations

import pytest

from rayr.gcs.rows import ActorInfo, ActorState


@pytest.mark.parametrize("restarts, max_restarts, may", [(0, 0, False), (0, 1, True), (1, 1, False),
                                                          (5, -1, True)])
def test_the_actor_restart_rule(restarts, max_restarts, may):
    row = {"state": "ALIVE", "class_name": "A", "node": "n", "restarts": str(restarts),
           "max_restarts": str(max_restarts), "creation_spec": b"spec"}
    info = ActorInfo.from_hash("a" * 32, row)
    assert info.state is ActorState.ALIVE and info.creation_spec == b"spec"
    assert info.may_restart() is may
