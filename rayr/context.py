"""The one per-process state object, and the runtime context API built on it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayr.core import CoreWorker
    from rayr.experimental.tqdm_ray import BarHub
    from rayr.log_stream import LogPrinter
    from rayr.node import LocalCluster
    from rayr.util.metrics import MetricsRecorder
    from rayr.worker.executor import TaskExecutor


class ProcessState:
    """What this process knows about the cluster it belongs to.

    ``core`` is set while connected (driver after init, worker for its whole life);
    ``cluster`` holds the processes this driver started, if it started any.
    """

    def __init__(self) -> None:
        self.core: CoreWorker | None = None
        # a worker's executor: what runs tasks here, and the actor it became (None in a driver)
        self.executor: TaskExecutor | None = None
        self.cluster: LocalCluster | None = None
        self.redis_url = ""  # the connected cluster's address (no password)
        self.log_printer: LogPrinter | None = None
        # rayr.experimental.tqdm_ray's bars: a driver's drawing, any process's late flushes
        self.bars: BarHub | None = None
        # this process's rayr.util.metrics series (made on the first metric)
        self.metrics: MetricsRecorder | None = None
        # the GPU ids this worker sees (ints, or the node's CUDA_VISIBLE_DEVICES strings)
        self.gpu_ids: list[int] | list[str] = []
        self.lock = threading.RLock()
        # connects a fresh driver on first use (``rayr.init()``); set by the API layer when it
        # is imported, so this module imports nothing above it
        self.auto_init: Callable[[], object] | None = None
        # a handle to the actor with this hex id (set by the API layer, like auto_init)
        self.actor_handle: Callable[[str], object] | None = None


state = ProcessState()


def require_core() -> CoreWorker:
    """The connected core worker; connects (``init()``) first when called in a fresh driver."""
    core = state.core
    if core is None:
        if state.auto_init is None:
            raise RuntimeError("rayr is not connected: call rayr.init() first")
        state.auto_init()
        core = state.core
        assert core is not None
    return core


class RuntimeContext:
    """Ray's ``get_runtime_context()``: ids of the current node, job, task and worker."""

    def __init__(self, core: CoreWorker) -> None:
        self._core = core

    def get_node_id(self) -> str:
        return self._core.node_hex

    def get_job_id(self) -> str:
        return self._core.job_id.hex()

    def get_task_id(self) -> str | None:
        """Hex id of the running task, or None in the driver."""
        task = self._core.current_task_id
        return task.hex() if task else None

    def get_task_name(self) -> str | None:
        """The running task's name (its function's unless ``.options(name=...)``)."""
        spec = self._core.current_spec
        return spec.name if spec is not None else None

    def get_task_function_name(self) -> str | None:
        """The running task's function, ``module.qualname`` style (``Class.method`` in an actor)."""
        spec = self._core.current_spec
        return spec.function_name if spec is not None else None

    def get_actor_name(self) -> str | None:
        """The name of the actor this code runs in (None outside actors or if it has none)."""
        executor = state.executor
        return (executor.actor_name or None) if executor is not None and executor.actor_id else None

    def get_actor_id(self) -> str | None:
        """Hex id of the actor this code runs in, or None outside actors."""
        executor = state.executor
        return executor.actor_id if executor is not None else None

    def is_canceled(self) -> bool:
        """Whether the running task (or actor call) has been cancelled."""
        task = self._core.current_task_id
        executor = state.executor
        return task is not None and executor is not None and executor.is_cancelled(task)

    def get_worker_id(self) -> str:
        return self._core.worker_hex

    @property
    def node_id(self) -> Any:
        return self.get_node_id()

    @property
    def job_id(self) -> Any:
        return self.get_job_id()

    @property
    def task_id(self) -> Any:
        return self.get_task_id()

    @property
    def namespace(self) -> str:
        return self._core.namespace

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime env this code runs in (the job's in a driver), paths as ``pkg://`` URIs."""
        return dict(self._core.envs.parent())

    def get_assigned_resources(self) -> dict[str, float]:
        return dict(self._core.current_resources)

    def get_placement_group_id(self) -> str | None:
        """Hex id of the placement group the running task or actor is in, or None."""
        return self._core.submitter.current_group()[0] or None

    @property
    def should_capture_child_tasks_in_placement_group(self) -> bool:
        """Whether what the running task or actor starts runs in its placement group."""
        return self._core.submitter.current_group()[1]

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in.

        Raises:
            RuntimeError: called outside an actor.
        """
        actor_id = self.get_actor_id()
        if actor_id is None or state.actor_handle is None:
            raise RuntimeError("current_actor is only available inside an actor's methods")
        return state.actor_handle(actor_id)

    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor runs again after its process or node died (restarts > 0)."""
        executor = state.executor
        return bool(executor is not None and executor.actor_id and executor.actor_restarted)

    @property
    def gcs_address(self) -> str:
        """The cluster's Redis address (without its password)."""
        return state.redis_url

    def get_runtime_env_string(self) -> str:
        """The runtime env this code runs in, as JSON."""
        return json.dumps(self.runtime_env)

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerator ids this worker was given, as strings: ``{"GPU": [...]}``."""
        return {"GPU": [str(i) for i in state.gpu_ids]}
