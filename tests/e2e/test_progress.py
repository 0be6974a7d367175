"""rayr.util.progress: refs yielded as they complete while a tqdm bar advances."""

from __future__ import annotations

import io
import time

import pytest

import rayr
from rayr.util import progress


@rayr.remote
def sleepy(seconds, value):
    time.sleep(seconds)
    return value


@rayr.remote
def fails():
    raise KeyError("nope")


def test_yields_every_ref_once_in_completion_order(ray):
    refs = [sleepy.remote(0.8, "slow")] + [sleepy.remote(0.0, i) for i in range(5)]
    buf = io.StringIO()
    out = list(progress(refs, desc="crunching", file=buf))
    assert len(out) == len(refs) and set(out) == set(refs)
    assert out[-1] == refs[0]  # the slow one completes last, so it comes last
    values = rayr.get(out)
    assert values[-1] == "slow" and sorted(values[:-1]) == [0, 1, 2, 3, 4]
    text = buf.getvalue()
    assert "crunching" in text and "6/6" in text and "100%" in text


def test_bar_goes_to_stderr_by_default_and_survives_no_tty(ray, capsys):
    refs = [sleepy.remote(0.0, i) for i in range(3)]
    assert sorted(rayr.get(list(progress(refs, desc="to-stderr")))) == [0, 1, 2]
    captured = capsys.readouterr()  # capsys' stderr is not a terminal
    assert "to-stderr" in captured.err and "3/3" in captured.err
    assert captured.out == ""


def test_disable(ray, capsys):
    refs = [sleepy.remote(0.0, i) for i in range(4)]
    buf = io.StringIO()
    assert set(progress(refs, desc="hidden", disable=True, file=buf)) == set(refs)
    assert set(progress(refs, disable=True)) == set(refs)
    assert buf.getvalue() == "" and capsys.readouterr().err == ""


def test_total_duplicates_and_empty(ray):
    a, b = sleepy.remote(0.0, "a"), sleepy.remote(0.0, "b")
    buf = io.StringIO()
    out = list(progress([a, b, a], total=10, file=buf))
    assert sorted(out, key=lambda r: r.hex()) == sorted([a, a, b], key=lambda r: r.hex())
    assert "3/10" in buf.getvalue()
    empty = io.StringIO()
    assert list(progress([], file=empty)) == []
    assert "0obj" in empty.getvalue()  # tqdm draws a zero total as a plain counter


def test_lazy_start_and_early_stop(ray):
    refs = [sleepy.remote(0.0, i) for i in range(3)]
    buf = io.StringIO()
    it = progress(iter(refs), desc="partial", file=buf)
    assert buf.getvalue() == ""  # nothing drawn until iteration starts
    first = next(it)
    assert first in refs
    it.close()  # the consumer stops early: the bar is closed where it stood
    text = buf.getvalue()
    assert "partial" in text and "1/3" in text and "3/3" not in text


def test_failed_tasks_count_as_complete(ray):
    bad, good = fails.remote(), sleepy.remote(0.0, "ok")
    out = list(progress([bad, good], file=io.StringIO()))
    assert set(out) == {bad, good}
    with pytest.raises(KeyError):
        rayr.get(bad)


def test_rejects_non_refs(ray):
    with pytest.raises(TypeError, match="ObjectRef"):
        progress([sleepy.remote(0.0, 1), 42])
    with pytest.raises(ValueError, match="total"):
        progress([], total=-1)
