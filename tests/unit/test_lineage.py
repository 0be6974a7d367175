"""Lineage and the rerun budget without Redis: ``LineageTable`` as the core worker drives it."""

from __future__ import annotations

from rayr.core.lineage import LineageTable
from rayr.task_spec import ACTOR_CALL, ACTOR_CREATION, STREAMING, TASK, TaskSpec


def spec(n: int, *, max_retries: int = 3, kind: int = TASK, num_returns: int = 1) -> TaskSpec:
    return TaskSpec(
        task_id=bytes([n]) * 16, job_hex="01000000", function_key="f", function_name="f", args=b"",
        args_object=None, ref_args=(), dep_records={}, num_returns=num_returns, resources={},
        max_retries=max_retries, retry_exceptions=False, owner="aa", attempt=0, name=f"t{n}", kind=kind,
    )


def keep(_spec: TaskSpec) -> bool:
    return True


def drop(_spec: TaskSpec) -> bool:
    return False


def test_a_running_task_holds_its_arguments_until_it_ends():
    t = LineageTable()
    s = spec(1)
    held = [object()]
    t.start(s, held, b"args-object", "shape", "DEFAULT")
    assert t.inflight[s.task_id] == (held, b"args-object") and s.task_id in t.running
    assert t.finish([s.task_id], drop) == [(held, b"args-object")]
    assert not t.inflight and not t.running and not t.finished


def test_a_finished_task_with_a_stored_referenced_output_keeps_its_lineage_and_arguments():
    t = LineageTable()
    s = spec(1)
    t.start(s, [object()], None, "shape", "DEFAULT")
    assert t.finish([s.task_id], keep) == []  # the hold stays with the lineage
    assert t.finished[s.task_id].spec == s


def test_what_keeps_no_lineage():
    t = LineageTable()
    for s in (spec(1, max_retries=0), spec(2, num_returns=STREAMING), spec(3, kind=ACTOR_CALL)):
        t.start(s, [], None, "", None)
        assert s.task_id in t.inflight and s.task_id not in t.running
    creation = spec(4, kind=ACTOR_CREATION)
    t.start(creation, ["arg"], None, "", None)
    assert t.creation_args == [(["arg"], None)] and creation.task_id not in t.inflight


def test_the_rerun_budget_is_max_retries():
    t = LineageTable()
    s = spec(1, max_retries=2)
    t.start(s, [], None, "shape", "SPREAD")
    t.finish([s.task_id], keep)
    for n in (1, 2):
        lineage = t.rerun(s.task_id)
        assert not isinstance(lineage, str) and lineage.reruns == n
        assert lineage.shape == "shape" and lineage.strategy == "SPREAD"
        assert s.task_id in t.inflight and s.task_id in t.running  # running again
        t.finish([s.task_id], keep)
    why = t.rerun(s.task_id)
    assert isinstance(why, str) and "re-run 2 times" in why
    assert s.task_id in t.finished  # refused: the lineage stays for the next loss to refuse too


def test_infinite_retries_rerun_without_limit():
    t = LineageTable()
    s = spec(1, max_retries=-1)
    t.start(s, [], None, "", None)
    t.finish([s.task_id], keep)
    for _ in range(10):
        assert not isinstance(t.rerun(s.task_id), str)
        t.finish([s.task_id], keep)


def test_a_rerun_of_a_task_without_lineage_says_why():
    t = LineageTable()
    why = t.rerun(b"\x07" * 16)
    assert isinstance(why, str) and "no lineage" in why


def test_lineage_goes_with_its_last_owned_output():
    t = LineageTable()
    s = spec(1, num_returns=2)
    r1, r2 = s.return_ids()
    t.start(s, [], b"args-object", "", None)
    t.finish([s.task_id], keep)
    assert t.outputs_freed([r1], owned={r2}) == []  # r2 still owned: lineage kept
    assert s.task_id in t.finished
    assert t.outputs_freed([r2], owned=set()) == [b"args-object"]
    assert not t.finished
