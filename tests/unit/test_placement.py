from __future__ import annotations

import pytest

from rayr.gcs.placement import place_bundles
from rayr.resources import renamed_request

NODES = {"a": {"CPU": 4.0}, "b": {"CPU": 2.0}, "c": {"CPU": 2.0}}


def test_strict_pack_one_node_or_nothing():
    assert place_bundles([{"CPU": 2}, {"CPU": 2}], "STRICT_PACK", NODES) == ["a", "a"]
    assert place_bundles([{"CPU": 3}, {"CPU": 2}], "STRICT_PACK", NODES) is None


def test_pack_fills_few_nodes():
    assert place_bundles([{"CPU": 3}, {"CPU": 2}], "PACK", NODES) in (["a", "b"], ["a", "c"])
    assert place_bundles([{"CPU": 1}] * 3, "PACK", NODES) == ["a", "a", "a"]


def test_strict_spread_distinct_nodes():
    placed = place_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", NODES)
    assert placed is not None and sorted(placed) == ["a", "b", "c"]
    assert place_bundles([{"CPU": 1}] * 4, "STRICT_SPREAD", NODES) is None
    assert place_bundles([{"CPU": 3}, {"CPU": 3}], "STRICT_SPREAD", NODES) is None


def test_spread_prefers_distinct_but_reuses():
    placed = place_bundles([{"CPU": 1}] * 4, "SPREAD", NODES)
    assert placed is not None and set(placed) == {"a", "b", "c"}


def test_custom_resources_and_unknown_strategy():
    nodes = {"a": {"CPU": 4.0}, "g": {"CPU": 1.0, "GPU": 1.0}}
    assert place_bundles([{"GPU": 1}], "PACK", nodes) == ["g"]
    with pytest.raises(ValueError, match="STRICT_PACK"):
        place_bundles([{"CPU": 1}], "RANDOM", nodes)


def test_renamed_request():
    assert renamed_request({"CPU": 1.0}, "ff", 0) == {"CPU_group_0_ff": 1.0, "bundle_group_0_ff": 0.001}
    assert renamed_request({}, "ff", -1) == {"bundle_group_ff": 0.001}
