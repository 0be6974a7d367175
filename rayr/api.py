"""The Ray-compatible API: init, shutdown, get, put, wait, remote and cluster queries."""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict, TypeVar, Unpack, overload

import redis

from rayr import context, log_config
from rayr.actor import ActorClass, ActorHandle, handle_from_table
from rayr.config import Settings, env_address, env_job_runtime_env, env_submission_id, load_settings
from rayr.context import RuntimeContext, state
from rayr.core import CoreWorker
from rayr.experimental import tqdm_ray
from rayr.gcs import command_stream
from rayr.gcs.client import GcsClient, connect_as, no_retry
from rayr.gcs.cluster import reachable, resolve
from rayr.gcs.jobs import end_job, kill_actor
from rayr.gcs.rows import NodeInfo
from rayr.ids import WorkerID
from rayr.keys import Keys
from rayr.log_config import LoggingConfig
from rayr.log_stream import LogPrinter
from rayr.node import LocalCluster
from rayr.object_ref import ObjectRef
from rayr.object_store.registry import open_backend
from rayr.remote_function import P, RemoteFunction
from rayr.runtime_env import resolver
from rayr.runtime_env.validation import validate as validate_runtime_env
from rayr.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from rayr.session import adopt_recorded_name, read_session_file, session_file_path
from rayr.streaming import ObjectRefGenerator

REMOTE_DRIVER_INLINE = 1 << 62  # a driver without a node keeps every object inline

R = TypeVar("R")
T = TypeVar("T")


@dataclass
class RayContext:
    """What ``init()`` returns: where the cluster is and which node this driver uses."""

    address_info: dict[str, Any] = field(default_factory=dict)

    @property
    def dashboard_url(self) -> str:
        """Where the cluster's dashboard is ("" without one), as Ray's ``RayContext``."""
        return str(self.address_info.get("webui_url", ""))

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def disconnect(self) -> None:
        shutdown()

    def __enter__(self) -> RayContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()


def _resolve_address(address: str | None, settings: Settings) -> tuple[str | None, str | None]:
    """(Redis URL, password) of the cluster to join, or (None, None) to start one."""
    if address == "local":  # as in Ray: always start a new local cluster
        return None, None
    if not address:
        address = env_address()
        if address is None:
            recorded = read_session_file(settings)
            if recorded and reachable(recorded["address"], recorded.get("password")):
                adopt_recorded_name(settings, recorded)
                return recorded["address"], recorded.get("password")
            return None, None
    if address == "auto":
        address = env_address()
        if address is None:
            recorded = read_session_file(settings)
            if recorded is None:
                raise ConnectionError(
                    "init(address='auto') found no cluster: RAYR_ADDRESS is not set and "
                    f"{session_file_path(settings)} does not exist. Start one with "
                    "`rayr start --head`, or call init() without an address to start a local one."
                )
            adopt_recorded_name(settings, recorded)
            return recorded["address"], recorded.get("password")
    return resolve(address, settings)


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    object_store_backend: str | None = None,
    object_spilling_directory: str | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    dashboard_host: str | None = None,
    dashboard_port: int | None = None,
    logging_level: str | int | None = None,
    logging_format: str | None = None,
    logging_config: LoggingConfig | None = None,
    configure_logging: bool = True,
    runtime_env: dict[str, Any] | None = None,
    local_mode: bool = False,
    _system_config: dict[str, Any] | None = None,
    _redis_password: str | None = None,
    _temp_dir: str | None = None,
    _cluster_name: str | None = None,
) -> RayContext:
    """Connect this process to a cluster, starting a local one when there is none.

    With no address it joins ``RAYR_ADDRESS`` or a cluster started on this host with
    ``rayr start``; otherwise it starts Redis, the monitor and a raylet as child processes
    that stop with ``shutdown()`` or when this process exits, however it exits.
    ``address`` may be ``"host:port"``, ``"redis://host:port"`` or ``"auto"``. With
    ``log_to_driver`` (the default) what tasks and actors print appears here, prefixed
    with ``(name pid=..., node=...)``. ``runtime_env`` is the job's: every task and actor of
    the job runs in it, merged with its own (see ``rayr.runtime_env``). A local cluster
    serves a dashboard (``include_dashboard``, on by default) on ``dashboard_host``
    (127.0.0.1) and ``dashboard_port`` (8265, or the next free port); the returned
    context's ``dashboard_url`` says where. ``configure_logging`` (on) gives the driver's
    ``rayr`` logger a handler when ``logging_level`` or ``logging_format`` is given;
    ``logging_config`` (a :class:`LoggingConfig`) formats the root logger of the driver and of
    the job's workers. ``_system_config`` is Ray's internal tuning: rayr has its own settings
    (``rayr.config``), so it is accepted with a warning naming what was ignored.
    ``local_mode=True`` (a testing aid) runs every task and actor in this process, when it is
    submitted, with the same serialization as on a worker (see ``rayr.worker.local_mode``).

    Raises:
        RuntimeError: already initialized (unless ``ignore_reinit_error``).
        ConnectionError: the given cluster cannot be reached.
        ValueError: a bad argument (an unknown runtime_env field, a missing working_dir, ...).
    """
    runtime_env = validate_runtime_env(runtime_env)
    _check_ray_options(logging_config, _system_config, local_mode, address)
    with state.lock:
        if state.core is not None:
            if ignore_reinit_error:
                return RayContext(_address_info(state.core))
            raise RuntimeError(
                "Maybe you called init() twice by accident? This error can be suppressed by "
                "passing ignore_reinit_error=True, or by calling shutdown() first."
            )
        level = logging_level if not isinstance(logging_level, int) else _level_name(logging_level)
        settings = load_settings(
            {
                "temp_dir": _temp_dir,
                "redis_password": _redis_password,
                "object_store_backend": object_store_backend,
                "object_store_memory": object_store_memory,
                "object_spilling_directory": object_spilling_directory,
                "cluster_name": _cluster_name,
                "log_level": level,
                "include_dashboard": include_dashboard,
                "dashboard_host": dashboard_host,
                "dashboard_port": dashboard_port,
            }
        )
        if object_store_backend is not None:
            from rayr.object_store.registry import get_backend_class

            get_backend_class(object_store_backend)  # unknown name: ValueError now, not in a child
        url, password = _resolve_address(address, settings) if not local_mode else (None, None)
        cluster = None
        if url is None:
            cluster = LocalCluster.new_session(settings, fork=True, unix_socket=True)
            try:
                cluster.start_head(
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    resources=resources,
                    object_store_memory=object_store_memory,
                )
            except BaseException:
                cluster.shutdown()
                raise
            url = cluster.redis_url
            if cluster.dashboard_url:
                # as Ray says it; on stderr, where a script's own output is not
                print(f"Started a local rayr instance. View the dashboard at {cluster.dashboard_url}",
                      file=sys.stderr)
        else:
            if num_cpus is not None or num_gpus is not None or resources is not None:
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus and resources "
                    "must not be given; they are set when the cluster's nodes start."
                )
            if password is not None:
                settings.redis_password = password
            if not reachable(url, settings.redis_password):
                raise ConnectionError(
                    f"Could not reach a rayr cluster at {url}. Start one with "
                    "`rayr start --head`, or call init() with no address to start a local one."
                )
        try:
            state.core = _connect(url, settings, namespace, runtime_env,
                                  logging_config.to_json() if logging_config is not None else "")
        except BaseException:
            if cluster is not None:
                cluster.shutdown()
            raise
        state.cluster = cluster
        # what we report (address_info, gcs_address): the TCP address, as Ray's host:port
        state.redis_url = cluster.tcp_url if cluster is not None else url
        _configure_driver(state.core, url, local_mode, configure_logging, level, logging_format,
                          logging_config)
        if log_to_driver:
            core = state.core
            pubsub = core.gcs.r.pubsub()
            pubsub.subscribe(core.keys.job_logs(core.job_id.hex()))
            # worker bars (rayr.experimental.tqdm_ray) arrive on the same channel
            state.log_printer = LogPrinter(pubsub, bars=tqdm_ray.instance())
            state.log_printer.start()
        _register_atexit()
        return RayContext(_address_info(state.core))


state.auto_init = init  # a fresh driver connects on its first use, as in Ray
state.actor_handle = handle_from_table


def _level_name(level: int) -> str:
    import logging

    return logging.getLevelName(level)


def _address_info(core: CoreWorker) -> dict[str, Any]:
    cluster = state.cluster
    return {
        "address": core.gcs.r.connection_pool.connection_kwargs.get("host", ""),
        "redis_address": _url_of(core),
        "webui_url": _dashboard_url(core),
        "node_id": core.node_hex,
        "session_dir": cluster.session_dir if cluster else "",
        "job_id": core.job_id.hex(),
    }


def _dashboard_url(core: CoreWorker) -> str:
    """The cluster's dashboard address ("" when it has none)."""
    try:
        url = core.gcs.r.hget(core.keys.dashboard, "url")
    except redis.RedisError:
        return ""
    if url is None and state.cluster is not None:  # ours, not listening yet
        return state.cluster.dashboard_url
    return url.decode() if url else ""


def _url_of(core: CoreWorker) -> str:
    if state.redis_url:
        return state.redis_url
    kw = core.gcs.r.connection_pool.connection_kwargs
    return f"redis://{kw.get('host')}:{kw.get('port')}"


def _driver_sys_path() -> list[str]:
    """Directories workers add to their import path so the driver's own modules import."""
    skip = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = [os.getcwd()]
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(path) and not any(path.startswith(s + os.sep) or path == s for s in skip):
            out.append(path)
    return list(dict.fromkeys(out))


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def _check_ray_options(logging_config: Any, system_config: Any, local_mode: bool,
                       address: str | None) -> None:
    if local_mode and address is not None:
        raise ValueError("local_mode=True runs tasks in this process on an embedded cluster; it "
                         f"cannot join the cluster at {address!r}")
    if logging_config is not None and not isinstance(logging_config, LoggingConfig):
        raise TypeError(f"logging_config must be a rayr.LoggingConfig, got {type(logging_config).__name__}")
    if system_config:
        if not isinstance(system_config, dict):
            raise TypeError(f"_system_config must be a dict, got {type(system_config).__name__}")
        _warn_once("_system_config", f"init(_system_config=...) is Ray's internal tuning and has no "
                   f"effect in rayr (ignored: {', '.join(map(str, system_config))}); rayr's own "
                   "settings are in rayr.config.Settings (RAYR_* environment variables)")


DRIVER_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"


def _configure_driver(core: CoreWorker, url: str, local_mode: bool, configure: bool, level: str | None,
                      fmt: str | None, config: LoggingConfig | None) -> None:
    """Local mode's in-process runner; Ray's ``configure_logging``: the driver's ``rayr``
    logger prints at ``level`` in ``fmt`` (only when either is given, so a plain ``init()``
    changes nothing); a ``LoggingConfig`` formats the root logger."""
    if local_mode:
        from rayr.worker.local_mode import LocalRunner

        core.submitter.local = LocalRunner(core, url).run
    if config is not None:
        log_config.apply(config.to_json(), lambda: {
            "job_id": core.job_id.hex(), "worker_id": core.worker_hex, "node_id": core.node_hex})
    if not configure or (level is None and fmt is None):
        return
    logger = logging.getLogger("rayr")
    handler = next((h for h in logger.handlers if getattr(h, "_rayr_driver", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._rayr_driver = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt or DRIVER_LOG_FORMAT))
    logger.setLevel(level or "INFO")


def _connect(
    url: str, settings: Settings, namespace: str | None, runtime_env: dict[str, Any] | None,
    logging_config: str = "",
) -> CoreWorker:
    keys = Keys(settings.cluster_name)
    gcs = GcsClient(connect_as(url, settings), keys)
    nodes = gcs.alive_nodes()
    if not nodes:
        raise ConnectionError(f"The cluster at {url} has no live nodes; start one with `rayr start`.")
    env_hash, env = resolver.job_env(gcs, runtime_env, env_job_runtime_env(),
                                     settings.runtime_env_max_package_bytes)
    submission_id = env_submission_id()
    hostname = socket.gethostname()
    local = [n for n in nodes if n.hostname == hostname]
    worker_hex = WorkerID.from_random().hex()
    if local:
        node = sorted(local, key=lambda n: (not n.is_head, n.start_time))[0]
        node_hex = node.node_id
        store = open_backend(node.store_backend, node.store_namespace, node.store_options)
    else:
        # A driver on a host with no node: its objects travel inline through Redis, and
        # objects it reads are pulled into its own memory.
        node_hex = f"driver-{worker_hex}"
        store = open_backend("memory", node_hex)
        settings = settings.model_copy(update={"inline_threshold": REMOTE_DRIVER_INLINE})
    namespace = namespace or f"anonymous-{uuid.uuid4().hex}"
    job_id = gcs.new_job(
        {
            "driver_pid": os.getpid(),
            "driver_node": node_hex,
            "driver_worker": worker_hex,
            "namespace": namespace,
            "entrypoint": " ".join(sys.argv),
            "sys_path": _driver_sys_path(),
            "runtime_env": env,
            "submission_id": submission_id or "",
            "logging_config": logging_config,
        }
    )
    if submission_id:  # `rayr job submit` started us: link the submission to this job
        gcs.r.hset(keys.submission(submission_id), "job_id", job_id.hex())
    core = CoreWorker(
        gcs=gcs,
        blocking_redis=connect_as(url, settings, retry=no_retry()),
        commands=command_stream.for_cluster(url, settings),
        settings=settings,
        node_hex=node_hex,
        store=store,
        job_id=job_id,
        worker_hex=worker_hex,
        namespace=namespace,
        liveness_ttl_s=settings.node_timeout_s,
        liveness_redis=connect_as(url, settings, single_connection_client=True,
                               client_name=keys.driver_client(job_id.hex())),
    )
    core.envs.set_parent(env_hash, env)
    return core


_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True


def shutdown() -> None:
    """Disconnect; stop the processes ``init()`` started; free this job's objects."""
    with state.lock:
        core, cluster, printer = state.core, state.cluster, state.log_printer
        state.core = None
        state.cluster = None
        state.log_printer = None
        if printer is not None:
            printer.stop(drain_s=0.05)
        tqdm_ray.close_driver_bars()  # no state arrives now: the bars left show their last
        if core is not None:
            runner = getattr(core.submitter.local, "__self__", None)  # local mode's
            if runner is not None:
                core.submitter.local = None
                runner.close()
            core.shutdown()
            end_job(core.gcs, core.job_id.hex(), "SUCCEEDED", "its owner (the driver) exited",
                    core.settings.task_events_retention_s)
            core.store.cleanup(core.job_id.binary())
            core.gcs.close()
        if cluster is not None:
            cluster.shutdown()


def is_initialized() -> bool:
    """Whether this process is connected to a cluster."""
    return state.core is not None


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(f"'timeout' must be None or a non-negative number of seconds, got {timeout!r}")


@overload
def get(object_refs: ObjectRef[R], *, timeout: float | None = None) -> R: ...


@overload
def get(object_refs: list[ObjectRef[R]], *, timeout: float | None = None) -> list[R]: ...


def get(object_refs: ObjectRef[Any] | list[ObjectRef[Any]], *, timeout: float | None = None) -> Any:
    """The value of a ref, or the values of a list of refs, waiting as needed.

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
        RayTaskError: the task failed (the error is also an instance of the original class).
    """
    _check_timeout(timeout)
    if isinstance(object_refs, ObjectRef):
        return context.require_core().get([object_refs], timeout)[0]
    if not isinstance(object_refs, list):
        raise ValueError(
            f"Invalid type of object refs, {type(object_refs).__name__}, is given. "
            "'object_refs' must either be an ObjectRef or a list of ObjectRefs."
        )
    for ref in object_refs:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"Attempting to call `get` on the value {ref!r}, which is not an ObjectRef.")
    if not object_refs:
        return []
    return context.require_core().get(object_refs, timeout)


def put(value: R) -> ObjectRef[R]:
    """Store ``value`` in the cluster; returns its ref."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling put() on an ObjectRef is not allowed. If you really want to do this, "
            "wrap it in a list: put([ref])."
        )
    return context.require_core().put(value)


@overload
def wait(
    object_refs: list[ObjectRef[R]], *, num_returns: int = 1, timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]]: ...


@overload
def wait(
    object_refs: list[ObjectRefGenerator[R]], *, num_returns: int = 1, timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRefGenerator[R]], list[ObjectRefGenerator[R]]]: ...


@overload
def wait(
    object_refs: list[Any], *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]: ...


def wait(
    object_refs: list[Any],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Split refs into (ready, not ready) once ``num_returns`` are ready or time runs out.

    Both lists keep the input order; ``ready`` holds at most ``num_returns`` refs. A
    streaming generator (``ObjectRefGenerator``) in the list is ready when ``next()`` on it
    would not block: its next item is ready, or it has ended.
    """
    del fetch_local  # values are read where they live; nothing to prefetch yet
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expected a list of ObjectRef, got a single ObjectRef")
    if not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ObjectRef, got {type(object_refs).__name__}")
    _check_timeout(timeout)
    for ref in object_refs:
        if not isinstance(ref, ObjectRef | ObjectRefGenerator):
            raise TypeError(f"wait() expected a list of ObjectRef, got list containing {type(ref).__name__}")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}; it must be >= 1.")
    if not object_refs:
        return [], []
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if num_returns > len(object_refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of objects "
            f"provided to wait() ({len(object_refs)})."
        )
    if any(isinstance(r, ObjectRefGenerator) for r in object_refs):
        return _wait_with_generators(object_refs, num_returns, timeout)
    oids = [r.binary() for r in object_refs]
    ready_ids = context.require_core().wait_ready(oids, num_returns, timeout)
    ready: list[ObjectRef[Any]] = []
    not_ready: list[ObjectRef[Any]] = []
    for ref in object_refs:
        if ref.binary() in ready_ids and len(ready) < num_returns:
            ready.append(ref)
        else:
            not_ready.append(ref)
    return ready, not_ready


def _wait_with_generators(entries: list[Any], num_returns: int,
                          timeout: float | None) -> tuple[list[Any], list[Any]]:
    """wait() over refs and generators: an entry is ready once any of its probe ids is (a
    generator has two), so readiness is gathered one wake-up at a time."""
    core = context.require_core()
    probes = [[e.binary()] if isinstance(e, ObjectRef) else e._probe_ids() for e in entries]
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[bytes] = set()
    while True:
        done = [any(i in seen for i in ids) for ids in probes]
        waiting = [i for ids, d in zip(probes, done, strict=True) if not d for i in ids]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if sum(done) >= num_returns or not waiting:
            break
        got = core.wait_ready(waiting, 1, left)
        seen |= set(got)
        if not got or left == 0.0:
            done = [any(i in seen for i in ids) for ids in probes]
            break
    ready: list[Any] = []
    not_ready: list[Any] = []
    for entry, d in zip(entries, done, strict=True):
        (ready if d and len(ready) < num_returns else not_ready).append(entry)
    return ready, not_ready


class RemoteOptions(TypedDict, total=False):
    """The options of ``@remote(...)`` but ``num_returns``, for type checkers: those of tasks
    (``remote_function.DEFAULT_TASK_OPTIONS``) and of actors (``actor.DEFAULT_ACTOR_OPTIONS``)."""

    num_cpus: float | None
    num_gpus: float | None
    accelerator_type: str | None
    memory: float | None
    resources: dict[str, float] | None
    max_retries: int | None
    retry_exceptions: bool | list[type[BaseException]] | None
    name: str | None
    scheduling_strategy: (Literal["DEFAULT", "SPREAD"] | NodeAffinitySchedulingStrategy
                          | PlacementGroupSchedulingStrategy | None)
    runtime_env: dict[str, Any] | None
    namespace: str | None
    lifetime: Literal["detached", "non_detached"] | None
    get_if_exists: bool | None
    max_restarts: int | None
    max_task_retries: int | None
    max_concurrency: int | None
    concurrency_groups: dict[str, int] | None


class RemoteDecorator(Protocol):
    """What ``@remote(...)`` with options returns: ``@remote`` itself, for type checkers."""

    @overload
    def __call__(self, target: type[T], /) -> ActorClass[T]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, target: Callable[P, Iterator[R]], /
    ) -> RemoteFunction[P, ObjectRefGenerator[R]]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, target: Callable[P, AsyncIterator[R]], /
    ) -> RemoteFunction[P, ObjectRefGenerator[R]]: ...

    @overload
    def __call__(self, target: Callable[P, R], /) -> RemoteFunction[P, ObjectRef[R]]: ...


# Type checkers see what .remote() returns: ObjectRef[R] for a function returning R,
# ObjectRefGenerator[T] for a generator of T, ActorClass[C] for a class C. Options are
# checked by name and type; a num_returns other than 1 makes .remote() return a list or
# None, so the result is then Any. The overloads only exist for type checkers: at run time
# the plain function below is all there is.
@overload
def remote(target: type[T], /) -> ActorClass[T]: ...  # type: ignore[overload-overlap]


@overload
def remote(  # type: ignore[overload-overlap]
    target: Callable[P, Iterator[R]], /
) -> RemoteFunction[P, ObjectRefGenerator[R]]: ...


@overload
def remote(  # type: ignore[overload-overlap]
    target: Callable[P, AsyncIterator[R]], /
) -> RemoteFunction[P, ObjectRefGenerator[R]]: ...


@overload
def remote(target: Callable[P, R], /) -> RemoteFunction[P, ObjectRef[R]]: ...


@overload
def remote(
    *, num_returns: Literal[1, "streaming"] | None = None, **options: Unpack[RemoteOptions]
) -> RemoteDecorator: ...


@overload
def remote(*, num_returns: int | str, **options: Unpack[RemoteOptions]) -> Callable[[Any], Any]: ...


def remote(*args: Any, **kwargs: Any) -> Any:
    """Make a function a remote function: ``@remote`` or ``@remote(num_cpus=..., ...)``."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "The @remote decorator takes either a function or keyword options, "
            "e.g. @remote(num_cpus=2)."
        )
    return lambda target: _make_remote(target, kwargs)


def _make_remote(target: Callable, options: dict[str, Any]) -> RemoteFunction[..., Any] | ActorClass[Any]:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@remote expects a function, got {type(target).__name__}")
    return RemoteFunction(target, options)


def get_runtime_context() -> RuntimeContext:
    """Ids of the current node, job, task and worker."""
    return RuntimeContext(context.require_core())


def get_gpu_ids() -> list[int] | list[str]:
    """The GPU ids given to the running task or actor (what its ``CUDA_VISIBLE_DEVICES``
    lists): ints, or strings when the node took its ids from ``CUDA_VISIBLE_DEVICES``; []
    in a driver and in tasks that asked for no GPU."""
    return list(context.state.gpu_ids)  # type: ignore[return-value]


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """This job's tasks as a Chrome trace (load it in chrome://tracing or ui.perfetto.dev): one
    slice per task run, a row per worker. Written to ``filename`` if given, else returned.
    Built from task events, so it shows what reached the GCS by now (events are sent about
    every ``task_events_flush_s``)."""
    from rayr.util.state.api import client_for, timeline_events

    core = context.require_core()
    events = timeline_events(client_for(None), core.job_id.hex())
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def _sum(nodes: list[NodeInfo], field_name: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in nodes:
        for name, amount in getattr(node, field_name).items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total


def cluster_resources() -> dict[str, float]:
    """Total resources of all live nodes."""
    return _sum(context.require_core().gcs.alive_nodes(), "resources_total")


def available_resources() -> dict[str, float]:
    """Resources free right now (as of the nodes' last heartbeats); zeros left out."""
    free = _sum(context.require_core().gcs.alive_nodes(), "resources_available")
    return {k: v for k, v in free.items() if v > 1e-9}


def nodes() -> list[dict[str, Any]]:
    """Every node the cluster has seen, with Ray's key names."""
    out = []
    for node in context.require_core().gcs.list_nodes():
        alive = node.alive
        out.append(
            {
                "NodeID": node.node_id,
                "Alive": alive,
                "alive": alive,
                "NodeManagerAddress": node.host,
                "NodeManagerHostname": node.hostname,
                "NodeManagerPort": 0,
                "ObjectStoreSocketName": node.store_namespace,
                "RayletSocketName": "",
                "NodeName": node.host,
                "Resources": node.resources_total if alive else {},
                "IsHead": node.is_head,
                "DeathReason": node.death_reason,
            }
        )
    return out


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor at once; pending and running calls fail with ActorDiedError.

    With ``no_restart=False`` the actor is restarted if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise ValueError(
            f"kill() only accepts an actor handle, got {type(actor).__name__}; "
            "tasks are not killed, they are cancelled."
        )
    kill_actor(context.require_core().gcs, actor._actor_id, "rayr.kill() was called", no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle[Any]:
    """The handle of the live actor called ``name`` in ``namespace`` (default: this job's).

    Raises:
        ValueError: no live actor has that name there.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, got {name!r}")
    core = context.require_core()
    ns = namespace if namespace is not None else core.namespace
    actor_id = core.gcs.named_actor(ns, name)
    if actor_id is None or core.gcs.actor_info(actor_id).get("state") == "DEAD":
        raise ValueError(
            f"Failed to look up actor with name {name!r} in namespace {ns!r}: no live actor has "
            "that name there. It may have died, or been created in another namespace."
        )
    return handle_from_table(actor_id)


def cancel(ref: ObjectRef[Any] | ObjectRefGenerator[Any], *, force: bool = False,
           recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``; ``get`` on it then raises TaskCancelledError.

    A queued task never runs. A running task gets KeyboardInterrupt raised in it, or with
    ``force=True`` its worker is killed. ``recursive`` also cancels the tasks it submitted.
    For actor calls: a queued call never runs; a running call on an async actor is
    cancelled, on a sync actor it can check ``get_runtime_context().is_canceled()``;
    ``force=True`` is refused for actor calls.

    Raises:
        TypeError: ``ref`` is not a task's output (e.g. it came from ``put``).
        ValueError: ``force=True`` on an actor call, or this process does not own ``ref``.
    """
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef returned by a task, got {type(ref).__name__}")
    context.require_core().cancel(ref.binary(), force, recursive)

