"""rayr.experimental.tqdm_ray: bars updated in tasks and actors are drawn by the driver while
the work runs, not after it."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rayr
from rayr.experimental import tqdm_ray
from rayr.experimental.tqdm_ray import ShownBar


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def bar_named(desc: str) -> ShownBar | None:
    return next((b for b in tqdm_ray.instance().bars() if b.state.desc == desc), None)


@pytest.fixture
def drawn(ray: Any) -> Iterator[io.StringIO]:
    """What the driver's bar manager draws from now on."""
    manager = tqdm_ray.instance()
    out = io.StringIO()
    manager.file = out
    yield out
    manager.file = None


@rayr.remote
def stepper(gate_dir: str, steps: int) -> int:
    """Advances a bar one step each time the driver drops a file ``go-<step>``."""
    bar = tqdm_ray.tqdm(total=steps, desc="stepping", unit="step")  # the default 1 s flush interval
    for step in range(steps):
        while not os.path.exists(os.path.join(gate_dir, f"go-{step}")):
            time.sleep(0.01)
        bar.update(1)
    bar.close()
    return steps


def test_the_driver_draws_a_tasks_bar_while_it_runs_and_removes_it_on_close(drawn, tmp_path: Path):
    steps = 3
    ref = stepper.remote(str(tmp_path), steps)
    for step in range(steps):
        # the bar shows `step` steps done while the task waits for the driver's go
        shown = wait_for(lambda s=step: (b := bar_named("stepping")) is not None and b.state.n == s and b,
                         f"the bar at {step}/{steps}")
        assert shown.source.startswith("(stepper pid=") and shown.state.total == steps
        assert not shown.state.closed
        assert rayr.wait([ref], timeout=0)[0] == [], "the task cannot end before its last go"
        assert f"{shown.source} stepping:" in drawn.getvalue() and f"{step}/{steps}" in drawn.getvalue()
        (tmp_path / f"go-{step}").touch()
    assert rayr.get(ref, timeout=60) == steps
    wait_for(lambda: bar_named("stepping") is None, "the bar closed")
    # a closed bar leaves its last state behind as a line
    assert "stepping: 100%" in drawn.getvalue() and f"{steps}/{steps}" in drawn.getvalue()


@rayr.remote
class Reader:
    def read(self, items: list[str], gate: str) -> int:
        for _ in tqdm_ray.tqdm(items, desc="reading", flush_interval_s=0):
            while not os.path.exists(gate):
                time.sleep(0.01)
        tqdm_ray.safe_print("read them all")
        return len(items)


def test_an_actor_iterates_with_a_bar_that_closes_at_the_end(drawn, tmp_path: Path):
    reader = Reader.remote()
    gate = tmp_path / "go"
    ref = reader.read.remote(["a", "b", "c"], str(gate))
    # the first item is being read: the bar is there, at 0 of 3 (total from len())
    shown = wait_for(lambda: bar_named("reading"), "the actor's bar")
    assert shown.state.n == 0 and shown.state.total == 3
    assert shown.source.startswith("(Reader pid=")
    gate.touch()
    assert rayr.get(ref, timeout=60) == 3
    wait_for(lambda: bar_named("reading") is None, "the bar closed at the end of the iteration")
    assert "reading: 100%" in drawn.getvalue() and "3/3" in drawn.getvalue()
    rayr.kill(reader)
