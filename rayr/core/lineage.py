"""Lineage: what it takes to run a finished task again when its stored outputs are lost.

``LineageTable`` does no I/O, takes no lock and starts no thread; the core worker calls it
under its one lock (tests/unit/test_lineage.py drives it without a cluster). It also holds
the argument refs of unfinished tasks, which is what keeps those arguments alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayr.task_spec import ACTOR_CREATION, DYNAMIC, STREAMING, TASK, TaskSpec

# the refs a task's arguments hold (kept alive until it ends), and its stored arguments object
ArgHold = tuple[list[Any], bytes | None]


@dataclass(slots=True)  # one per queued task that may re-run: kept small
class Lineage:
    """A task as submitted: the spec, how it was placed, and its arguments (kept alive, as Ray
    pins lineage)."""

    spec: TaskSpec
    shape: str
    strategy: Any
    arg_refs: list[Any]
    args_object: bytes | None
    reruns: int = 0


class LineageTable:
    """Running tasks' argument holds and lineage, and the lineage of finished tasks whose
    stored outputs are still referenced. Not thread-safe: call under the core's lock."""

    def __init__(self) -> None:
        self.inflight: dict[bytes, ArgHold] = {}  # task id -> its argument hold, until it ends
        # a restarted actor re-reads its creation arguments: they are kept for the job's life
        self.creation_args: list[ArgHold] = []
        self.running: dict[bytes, Lineage] = {}  # unfinished tasks that may be re-run later
        self.finished: dict[bytes, Lineage] = {}  # finished tasks whose outputs can be rebuilt

    def start(self, spec: TaskSpec, held: list[Any], args_object: bytes | None, shape: str,
              strategy: Any) -> None:
        """A task was submitted: hold its arguments, and keep its lineage if it may re-run."""
        if spec.kind == ACTOR_CREATION:
            self.creation_args.append((held, args_object))
            return
        self.inflight[spec.task_id] = (held, args_object)
        if spec.kind == TASK and spec.max_retries != 0 and spec.num_returns not in (STREAMING, DYNAMIC):
            self.running[spec.task_id] = Lineage(spec, shape, strategy, held, args_object)

    def finish(self, task_ids: list[bytes], keeps: Any) -> list[ArgHold]:
        """Tasks ended (a task's returns arrive together, so call after the whole batch is
        filed). A task whose lineage ``keeps(spec)`` approves keeps holding its arguments;
        returns the holds to release now."""
        done = []
        for task_id in task_ids:
            held = self.inflight.pop(task_id, None)
            lineage = self.running.pop(task_id, None)
            if lineage is not None and keeps(lineage.spec):
                self.finished[task_id] = lineage  # holds the arguments until the outputs die
            elif held is not None:
                done.append(held)
        return done

    def outputs_freed(self, oids: list[bytes], owned: set[bytes]) -> list[bytes]:
        """Owned objects were freed: forget lineage none of whose outputs is owned any more.
        Returns the stored-arguments objects that go with it."""
        drop = []
        for oid in oids:
            lineage = self.finished.get(oid[:16])
            if lineage is not None and not any(r in owned for r in lineage.spec.return_ids()):
                del self.finished[oid[:16]]  # its argument refs are released with it
                if lineage.args_object is not None:
                    drop.append(lineage.args_object)
        return drop

    def rerun(self, task_id: bytes) -> Lineage | str:
        """Take a finished task's lineage to run it again (counted against its retries);
        returns why it cannot be instead, if it cannot."""
        lineage = self.finished.get(task_id)
        if lineage is None:
            return "no lineage was kept for it (an actor's result, max_retries=0, or a streamed item)"
        spec = lineage.spec
        if spec.max_retries != -1 and lineage.reruns >= spec.max_retries:
            return f"its task {spec.name!r} was already re-run {lineage.reruns} times (max_retries)"
        lineage.reruns += 1
        del self.finished[task_id]
        self.inflight[task_id] = (lineage.arg_refs, lineage.args_object)
        self.running[task_id] = lineage
        return lineage
