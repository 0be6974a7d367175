"""``init(local_mode=True)``: tasks and actors run in the driver process, as a testing aid.

Each task runs when it is submitted, in the submitting thread, one at a time; each actor is an
object in the driver and its calls run when they are made. Everything else is the real thing:
arguments and results are serialized and deserialized exactly as on a worker, results are
filed in the driver's ownership table (and the object table) before ``.remote()`` returns,
and the GCS (actor table, named actors, placement groups) lives in the embedded Redis. No
raylet or worker process ever sees these tasks, so resources, retries after crashes,
cancellation of running tasks and ``max_concurrency`` mean nothing here.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import TYPE_CHECKING, Any

from rayr import serialization
from rayr.exceptions import ActorDiedError
from rayr.gcs import records as rec
from rayr.gcs import spread
from rayr.task_spec import ACTOR_CALL, ACTOR_CREATION, READY_METHOD, TaskSpec
from rayr.worker.executor import TaskExecutor

if TYPE_CHECKING:
    from rayr.core import CoreWorker


class LocalRunner:
    """Runs the driver's own tasks and actor calls in-process (see the module docstring)."""

    def __init__(self, core: CoreWorker, redis_url: str) -> None:
        self.core = core
        self.executor = TaskExecutor(core, None, redis_url)  # type: ignore[arg-type]  # no raylet
        self.actors: dict[str, Any] = {}
        self._lock = threading.RLock()  # one task at a time, nested ones included
        self._loop: asyncio.AbstractEventLoop | None = None  # async actor methods run here

    def run(self, spec: TaskSpec) -> None:
        """Run a ready task, actor creation or actor call now and file its results."""
        with self._lock:
            self.executor.enter_job(spec)
            self.core.set_current_task(spec.task_id, spec.resources, spec)
            try:
                if spec.kind == ACTOR_CREATION:
                    records = self._create(spec)
                elif spec.kind == ACTOR_CALL:
                    records = self._call(spec)
                else:
                    records = self.executor.run(spec, None)
            finally:
                self.core.set_current_task(None)
            self._file(spec, records)

    def _create(self, spec: TaskSpec) -> list[bytes]:
        holder: list[Any] = []

        def construct(*args: Any, **kwargs: Any) -> None:
            holder.append(self.executor.load_function(spec)(*args, **kwargs))

        records = self.executor.run(spec, construct)
        gcs = self.core.gcs
        if holder:
            self.actors[spec.actor_id] = holder[0]
            gcs.set_actor_state(spec.actor_id, "ALIVE", node=self.core.node_hex, pid=0,
                                worker=self.core.worker_hex, creation_spec=spec.encode())
        else:
            cause = "The actor died because of an error raised in its creation task."
            gcs.fail_tasks(gcs.mark_actor_dead(spec.actor_id, cause), ActorDiedError(cause, spec.actor_id))
        return records

    def _call(self, spec: TaskSpec) -> list[bytes]:
        instance = self.actors.get(spec.actor_id)
        if instance is None or self.core.gcs.actor_info(spec.actor_id).get("state") == "DEAD":
            self.actors.pop(spec.actor_id, None)
            err = ActorDiedError(f"The actor {spec.actor_id} is dead.", spec.actor_id)
            return [rec.error_record(serialization.dumps(err))] * max(spec.num_returns, 1)
        if spec.method == READY_METHOD:
            return self.executor.run(spec, lambda: True)
        method = getattr(instance, spec.method)
        if inspect.iscoroutinefunction(method):
            def run_async(*args: Any, **kwargs: Any) -> Any:
                return self._event_loop().run_until_complete(method(*args, **kwargs))

            return self.executor.run(spec, run_async)
        return self.executor.run(spec, method)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _file(self, spec: TaskSpec, records: list[bytes]) -> None:
        """The results, in the object table (for whoever reads them by id) and in the
        driver's own table, before ``.remote()`` returns."""
        ids = spec.return_ids()
        items = [(oid, record, "") for oid, record in zip(ids, records, strict=True)]
        spread.send(self.core.commands, self.core.gcs, self.core.gcs.store_objects_commands(items))
        self.core.file_messages([rec.object_message(oid, record)
                                 for oid, record in zip(ids, records, strict=True)])

    def close(self) -> None:
        self.actors.clear()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
