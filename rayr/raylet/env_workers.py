"""The raylet's side of runtime envs: workers of an env start only once the env is set up
on this node; a failed setup fails the tasks queued for it (and only those)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayr.exceptions import ActorDiedError, RuntimeEnvSetupError
from rayr.keys import TASK_GROUP
from rayr.raylet.scheduler import split_kind
from rayr.runtime_env.manager import EnvManager
from rayr.task_spec import TaskSpec

if TYPE_CHECKING:
    from rayr.raylet.raylet import Raylet
    from rayr.raylet.scheduler import QueuedTask


class EnvWorkers:
    """Starts workers in runtime envs for one raylet (its main thread only)."""

    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.manager = EnvManager(raylet.gcs.r, raylet.keys, raylet.session_dir, raylet.settings.temp_dir,
                                  raylet.wake)
        self._waiting: dict[str, int] = {}  # worker kind -> workers to start once its env is set up

    def start_worker(self, kind: str) -> None:
        """Start a worker of ``kind`` (an env, maybe GPU ids) now, or once its env's setup
        (begun here if need be) is done."""
        raylet = self.raylet
        env = split_kind(kind)[0]
        with raylet.lock:
            raylet.sched.on_worker_started(kind)
        ready = self.manager.ready(env)
        if ready is not None:
            raylet.spawn_worker(kind, ready)
            return
        failure = self.manager.failure(env)
        if failure is not None:
            with raylet.lock:
                raylet.sched.on_worker_failed_to_start(kind)
            self.fail_queued(env, failure)
            return
        self._waiting[kind] = self._waiting.get(kind, 0) + 1
        self.manager.start(env)

    def prepare(self, env: str) -> None:
        """Set an env up ahead of its first task (``eager_install``)."""
        self.manager.start(env)

    def on_wake(self) -> None:
        """Act on setups that ended: start the workers that waited, or fail the tasks."""
        for env, worker_env, error in self.manager.finished():
            kinds = {kind: self._waiting.pop(kind) for kind in list(self._waiting)
                     if split_kind(kind)[0] == env}
            if worker_env is not None:
                for kind, count in kinds.items():
                    for _ in range(count):
                        self.raylet.spawn_worker(kind, worker_env)
                continue
            with self.raylet.lock:
                for kind, count in kinds.items():
                    for _ in range(count):
                        self.raylet.sched.on_worker_failed_to_start(kind)
            self.fail_queued(env, error)

    def worker_failed(self, env: str, error: str) -> None:
        """A worker of ``env`` could not start: the env counts as failed for a while."""
        self.manager.mark_failed(env, error)
        self.fail_queued(env, error)

    def fail_queued(self, env: str, error: str) -> None:
        """Fail every task queued here for ``env`` with RuntimeEnvSetupError."""
        raylet = self.raylet
        with raylet.lock:
            tasks = raylet.sched.take_env_tasks(env)
        for task in tasks:
            self._fail(task, error)
        if tasks:
            raylet.capacity_freed()

    def _fail(self, task: QueuedTask, error: str) -> None:
        raylet = self.raylet
        gcs = raylet.gcs
        spec = TaskSpec.decode(task.spec)
        err = RuntimeEnvSetupError(
            f"The runtime env of {spec.name} could not be set up on node {raylet.node_id[:12]}: {error}"
        )
        with gcs.stream_pipeline(task.stream) as pipe:
            if task.actor:
                cause = f"The actor {task.actor} died: {err}"
                gcs.fail_tasks(gcs.mark_actor_dead(task.actor, cause), ActorDiedError(cause, task.actor))
            if not task.restart:
                gcs.fail_tasks([spec], err, pipe)
            if task.stream:
                pipe.xack(task.stream, TASK_GROUP, task.entry_id)
                pipe.xdel(task.stream, task.entry_id)
            pipe.execute()

    def shutdown(self) -> None:
        self.manager.shutdown()
