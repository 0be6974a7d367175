"""rayr.experimental.tqdm_ray without a cluster: the wire form and the driver's drawing."""

from __future__ import annotations

import io

import pytest

from rayr import log_stream
from rayr.experimental import tqdm_ray
from rayr.experimental.tqdm_ray import BarManager, BarState


def test_a_bar_state_survives_the_log_channel_round_trip():
    state = BarState("ab12", desc="epoch 3", n=7, total=10.5, position=2, unit="B", unit_scale=True)
    message = log_stream.encode("f00dfeed" * 4, {"pid": 42, "name": "train", "bars": [state.to_wire()]})
    batch = log_stream.parse(message.encode())
    assert batch.source == "(train pid=42, node=f00dfe)"
    assert batch.lines == [] and batch.text() == ""
    assert [BarState.from_wire(data) for data in batch.bars] == [state]


def test_ordinary_lines_parse_as_before():
    message = log_stream.encode("abcdef12", {"pid": 1, "name": "", "err": True, "lines": ["a", "b"]})
    batch = log_stream.parse(message)
    assert batch.is_err and batch.bars == []
    assert batch.text() == "(worker pid=1, node=abcdef) a\n(worker pid=1, node=abcdef) b\n"


def test_from_wire_ignores_unknown_fields_and_rejects_what_is_not_a_state():
    assert BarState.from_wire({"uuid": "x", "n": 3, "colour": "red"}) == BarState("x", n=3)
    for bad in ({"n": 3}, {"uuid": 5}, ["uuid"], None):
        with pytest.raises(ValueError):
            BarState.from_wire(bad)  # type: ignore[arg-type]


def _lines(manager: BarManager) -> list[tuple[int, str, str, float]]:
    return [(b.line, b.source, b.state.desc, b.state.n) for b in manager.bars()]


def test_the_manager_gives_each_bar_a_line_grouped_by_process_and_moves_bars_up_on_close():
    out = io.StringIO()
    manager = BarManager(file=out)
    a, b = "(f pid=1, node=aaaaaa)", "(g pid=2, node=aaaaaa)"
    manager.apply(a, [BarState("a0", desc="a0", total=4).to_wire()])
    manager.apply(b, [BarState("b0", desc="b0", total=4).to_wire()])
    # a second bar of the first process goes under that process's first bar, position 1
    manager.apply(a, [BarState("a1", desc="a1", total=4, position=1).to_wire()])
    assert _lines(manager) == [(0, a, "a0", 0), (1, a, "a1", 0), (2, b, "b0", 0)]

    manager.apply(b, [BarState("b0", desc="b0 renamed", n=3, total=4).to_wire()])
    assert _lines(manager)[2] == (2, b, "b0 renamed", 3)
    assert "b0 renamed:  75%" in out.getvalue() and "3/4" in out.getvalue()

    manager.apply(a, [BarState("a0", desc="a0", n=4, total=4, closed=True).to_wire()])
    assert _lines(manager) == [(0, a, "a1", 0), (1, b, "b0 renamed", 3)]
    # the closed bar leaves its last state as a line of its own
    assert f"{a} a0: 100%" in out.getvalue()

    manager.close_all()
    assert manager.bars() == []
    assert f"{b} b0 renamed:  75%" in out.getvalue()


def test_states_that_are_not_bars_are_skipped():
    manager = BarManager(file=io.StringIO())
    manager.apply("(f pid=1, node=aaaaaa)", [{"no": "uuid"}, BarState("ok").to_wire()])
    assert [b.state.uuid for b in manager.bars()] == ["ok"]
    manager.close_all()


def test_a_bar_in_the_driver_is_drawn_by_the_drivers_manager():
    manager = tqdm_ray.instance()
    out = io.StringIO()
    manager.file = out
    try:
        bar = tqdm_ray.tqdm(range(3), desc="local", unit="step")
        assert [(b.source, b.state.total) for b in manager.bars()] == [("", 3)]
        assert list(bar) == [0, 1, 2]  # iterating to the end closes the bar
        assert manager.bars() == []
        assert "local: 100%" in out.getvalue() and "3/3" in out.getvalue()
        with tqdm_ray.tqdm(total=2, desc="manual") as manual:
            manual.update(2)
            manual.set_description("renamed")
        assert manual.n == 2 and manual.desc == "renamed"
        assert "renamed: 100%" in out.getvalue()
        manual.update(1)  # after close: ignored, as tqdm
        assert manual.n == 2
    finally:
        manager.file = None


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="flush_interval_s"):
        tqdm_ray.tqdm(total=1, flush_interval_s=-1)
    with pytest.raises(ValueError, match="position"):
        tqdm_ray.tqdm(total=1, position=-2)
    bar = tqdm_ray.tqdm(total=1)
    with pytest.raises(TypeError, match="no iterable"):
        next(iter(bar))
    bar.close()
