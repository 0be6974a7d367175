"""The one per-process state object, and the runtime context API built on it."""

from __future__ import annotations

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
        self.lock = threading.RLock()
        # connects a fresh driver on first use (``rayr.init()``); set by the API layer when it
        # is imported, so this module imports nothing above it
        self.auto_init: Callable[[], object] | None = None


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
