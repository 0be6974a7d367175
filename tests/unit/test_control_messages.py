"""Node control-stream messages: each kind survives its trip through stream-entry fields."""

from __future__ import annotations

import pytest

from rayr.gcs import control


@pytest.mark.parametrize("message", [
    control.Poke(),
    control.Kill("ab" * 16),
    control.Cancel(bytes(range(16)), "force,recursive", "node.worker"),
    control.Cancel(bytes(16)),
    control.Pull(bytes(range(20)), "cd" * 16, 123_456_789),
    control.ReserveBundles("ef" * 14, [(0, {"CPU": 1.0}), (2, {"GPU": 0.5, "custom": 2.0})], "reply:key"),
    control.ReleaseBundles("ef" * 14),
    control.JobDone("00000007"),
    control.PrepareEnv("0123abcd"),
])
def test_round_trip(message):
    # what Redis hands back: the same bytes fields
    assert control.parse(dict(message.fields())) == [message]


def test_an_entry_of_no_known_kind_carries_nothing():
    assert control.parse({b"something": b"else"}) == []
