"""Actors: ``@rayr.remote`` classes, their handles and methods."""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar, overload

from rayr import context
from rayr.exceptions import ActorExitRequest
from rayr.object_ref import ObjectRef
from rayr.remote_function import (
    Out,
    P,
    _Exported,
    check_strategy,
    default_num_returns,
    parse_num_returns,
    retry_exceptions_spec,
    validate_task_options,
)
from rayr.resources import shape_key
from rayr.routing import in_placement_group
from rayr.runtime_env.validation import validate as validate_runtime_env
from rayr.streaming import remote_result
from rayr.task_spec import ACTOR_CALL, ACTOR_CREATION, READY_METHOD, TaskOptions

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": None,
    "num_gpus": None,
    "accelerator_type": None,
    "memory": None,
    "resources": None,
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,
    # name -> threads (sync actors) or concurrent calls (async actors) of that group
    "concurrency_groups": None,
    "scheduling_strategy": "DEFAULT",
    "runtime_env": None,
}
METHOD_OPTIONS = ("num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group")
# @method options Ray has that mean nothing here: accepted with a warning saying why
NO_EFFECT = {
    "enable_task_events": "task events are on or off per process here (RAYR_TASK_EVENTS)",
    "tensor_transport": "objects travel through the object store and Redis only",
}
ASYNC_DEFAULT_CONCURRENCY = 1000

T = TypeVar("T")  # the actor's class
F = TypeVar("F", bound=Callable[..., Any])


def exit_actor() -> None:
    """End the current actor on purpose: no restart; pending and later calls fail."""
    executor = context.state.executor
    if executor is None or executor.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor method")
    raise ActorExitRequest()


@overload
def method(*, num_returns: Literal[1, "streaming"] = 1, concurrency_group: str | None = None,
           max_task_retries: int | None = None, retry_exceptions: Any = None,
           **others: Any) -> Callable[[F], F]: ...


@overload
def method(*, num_returns: int | str, concurrency_group: str | None = None,
           max_task_retries: int | None = None, retry_exceptions: Any = None,
           **others: Any) -> Callable[[Callable[..., Any]], Any]: ...


# For type checkers a method keeps its signature unless ``num_returns`` makes ``.remote()``
# return a list or None: then it is Any, rather than typed as returning one ref.
def method(*, num_returns: Any = 1, concurrency_group: str | None = None,
           max_task_retries: int | None = None, retry_exceptions: Any = None, **others: Any) -> Any:
    """Decorate an actor method with options, as Ray's ``@ray.method``: ``num_returns``, the
    ``concurrency_group`` it runs in, its own ``max_task_retries`` and ``retry_exceptions``.
    ``enable_task_events`` and ``tensor_transport`` are accepted with a warning (no effect).

    Raises:
        ValueError: an unknown option or a bad value.
    """
    unknown = sorted(set(others) - set(NO_EFFECT))
    if unknown:
        raise ValueError(f"Invalid option(s) {unknown} for @method; valid options: num_returns, "
                         f"concurrency_group, max_task_retries, retry_exceptions, {', '.join(NO_EFFECT)}")
    for name in others:
        warnings.warn(f"@method({name}=...) has no effect in rayr: {NO_EFFECT[name]}", UserWarning,
                      stacklevel=2)
    parse_num_returns(num_returns)
    if concurrency_group is not None and (not isinstance(concurrency_group, str) or not concurrency_group):
        raise ValueError(f"concurrency_group must be a group's name, got {concurrency_group!r}")
    if max_task_retries is not None and (isinstance(max_task_retries, bool)
                                         or not isinstance(max_task_retries, int) or max_task_retries < -1):
        raise ValueError(f"max_task_retries must be an int >= -1, got {max_task_retries!r}")
    options: dict[str, Any] = {"concurrency_group": concurrency_group, "max_task_retries": max_task_retries}
    if retry_exceptions is not None:
        spec = retry_exceptions_spec(retry_exceptions)
        # kept in the actor table as JSON: a list of classes travels pickled, in hex
        options["retry_exceptions"] = spec if isinstance(spec, bool) else spec.hex()

    def mark(fn: Any) -> Any:
        fn.__rayr_num_returns__ = num_returns
        fn.__rayr_method_options__ = {k: v for k, v in options.items() if v is not None}
        return fn

    return mark


def _int_option(options: dict[str, Any], name: str, minimum: int) -> int:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"actor option {name!r} must be an int >= {minimum}, got {value!r}")
    return value


def validate_actor_options(options: dict[str, Any], is_async: bool) -> dict[str, Any]:
    """Check actor options; returns them completed with derived placement/lifetime resources.

    Raises:
        ValueError: an unknown option or a bad value, naming it and what is valid.
    """
    unknown = sorted(set(options) - set(DEFAULT_ACTOR_OPTIONS))
    if unknown:
        raise ValueError(
            f"Invalid option(s) {', '.join(map(repr, unknown))} for an actor. "
            f"Valid options: {', '.join(DEFAULT_ACTOR_OPTIONS)}."
        )
    opts = {**DEFAULT_ACTOR_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    explicit = any(opts[k] is not None for k in ("num_cpus", "num_gpus", "memory", "resources"))
    # Resources as Ray sets them: with none given, 1 CPU to place the actor and 0 held while
    # it lives, so a node can host more actors than it has CPUs.
    lifetime = validate_task_options(
        {
            "num_cpus": opts["num_cpus"] or 0,
            "num_gpus": opts["num_gpus"],
            "memory": opts["memory"],
            "resources": opts["resources"],
            "accelerator_type": opts["accelerator_type"],
        }
    ).resources
    # an accelerator type alone still places the actor on a node of that type
    placement = lifetime if explicit else {"CPU": 1.0, **lifetime}
    for name in ("name", "namespace"):
        if opts[name] is not None and (not isinstance(opts[name], str) or not opts[name]):
            raise ValueError(f"actor option {name!r} must be a non-empty string, got {opts[name]!r}")
    if opts["lifetime"] not in (None, "detached", "non_detached"):
        raise ValueError(
            f"actor option 'lifetime' must be None, 'detached' or 'non_detached', got {opts['lifetime']!r}"
        )
    if opts["get_if_exists"] and not opts["name"]:
        raise ValueError("actor option 'get_if_exists' needs a 'name'")
    check_strategy(opts["scheduling_strategy"])
    opts["runtime_env"] = validate_runtime_env(opts["runtime_env"])
    max_restarts = _int_option(opts, "max_restarts", -1)
    max_task_retries = _int_option(opts, "max_task_retries", -1)
    if opts["max_concurrency"] is None:
        opts["max_concurrency"] = ASYNC_DEFAULT_CONCURRENCY if is_async else 1
    max_concurrency = _int_option(opts, "max_concurrency", 1)
    opts.update(
        placement=placement,
        lifetime_resources=lifetime,
        max_restarts=max_restarts,
        max_task_retries=max_task_retries,
        max_concurrency=max_concurrency,
    )
    return opts


def _methods_of(cls: type) -> dict[str, Any]:
    """Public callable attributes of the class -> their num_returns (and ``__ray_ready__``)."""
    out: dict[str, Any] = {READY_METHOD: 1}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") or not callable(member) or inspect.isclass(member):
            continue
        num_returns = getattr(member, "__rayr_num_returns__", default_num_returns(member))
        options = getattr(member, "__rayr_method_options__", None)
        out[name] = {"num_returns": num_returns, **options} if options else num_returns
    return out


def _method_options(entry: Any) -> dict[str, Any]:
    """A method's options from the methods table (an int there is just its num_returns)."""
    return dict(entry) if isinstance(entry, dict) else {"num_returns": entry}


def _check_groups(groups: Any, methods: dict[str, Any], class_name: str) -> dict[str, int]:
    """The actor's concurrency groups, checked against what its methods name.

    Raises:
        ValueError: a malformed group, or a method naming a group the actor does not have.
    """
    groups = groups or {}
    if not isinstance(groups, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in groups.items()):
        raise ValueError(f"concurrency_groups must map group names to concurrency >= 1, e.g. "
                         f"{{'io': 2, 'compute': 4}}; got {groups!r}")
    for name, entry in methods.items():
        group = _method_options(entry).get("concurrency_group")
        if group is not None and group not in groups:
            raise ValueError(f"{class_name}.{name} runs in concurrency group {group!r}, which the actor does "
                             f"not define; its concurrency_groups: {sorted(groups) or 'none'}")
    return dict(groups)


def _is_async_class(cls: type) -> bool:
    return any(
        inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
        for _, m in inspect.getmembers(cls, predicate=inspect.isfunction)
    )


class ActorClass(Generic[T]):
    """A class made remote: ``Cls.remote(...)`` creates an actor and returns its handle.

    For type checkers ``rayr.remote(Cls)`` is an ``ActorClass[Cls]`` and ``.remote()`` an
    ``ActorHandle[Cls]``. mypy ignores what a class decorator returns, so ``@rayr.remote``
    on a class needs rayr's mypy plugin (``rayr.mypy_plugin``) for ``Cls.remote()``.
    """

    def __init__(self, cls: type[T], options: dict[str, Any], _exported: _Exported | None = None):
        self._cls = cls
        self._options = dict(options)
        self._is_async = _is_async_class(cls)
        self._validated = validate_actor_options(self._options, self._is_async)
        self._exported = _exported or _Exported(cls)
        self._methods = _methods_of(cls)
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorClass, (self._cls, self._options))

    def options(self, **options: Any) -> ActorClass[T]:
        """A copy with some options changed."""
        return ActorClass(self._cls, {**self._options, **options}, self._exported)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Create the actor; returns its handle at once (construction happens remotely)."""
        core = context.require_core()
        opts = self._validated
        namespace = opts["namespace"] or core.namespace
        name = opts["name"] or ""
        detached = opts["lifetime"] == "detached"
        exported = self._exported
        exported.pickled()
        key = core.export_function(exported.digest, exported.pickled)
        actor_hex = core.job_id.hex() + os.urandom(12).hex()
        fields = {
            "actor_id": actor_hex,
            "state": "PENDING",
            "class_name": self.__name__,
            "name": name,
            "namespace": namespace,
            "job": "" if detached else core.job_id.hex(),
            "detached": int(detached),
            "owner": core.worker_hex,
            "max_restarts": opts["max_restarts"],
            "max_task_retries": opts["max_task_retries"],
            "max_concurrency": opts["max_concurrency"],
            "restarts": 0,
            "methods": json.dumps(self._methods),
            "is_async": int(self._is_async),
            "node": "",
        }
        created, existing = core.gcs.register_actor(
            actor_hex, namespace, name, fields["job"], fields
        )
        if not created:
            if opts["get_if_exists"]:
                return handle_from_table(existing)
            raise ValueError(
                f"The actor name {name!r} is already taken in namespace {namespace!r} by actor "
                f"{existing}. Pick another name, or pass get_if_exists=True to reuse it."
            )
        placement = opts["placement"]  # renamed into the group's resources by submit_task
        create_opts = TaskOptions(
            resources=placement,
            shape=shape_key(placement),
            num_returns=1,
            max_retries=0,
            retry_exceptions=False,
            name=f"{self.__name__}.__init__",
            strategy=opts["scheduling_strategy"],
            runtime_env=opts["runtime_env"],
        )
        core.submit_task(
            key,
            f"{self.__name__}.__init__",
            args,
            kwargs,
            create_opts,
            kind=ACTOR_CREATION,
            actor_id=actor_hex,
            actor_options={
                "lifetime_resources": in_placement_group(
                    opts["lifetime_resources"], opts["scheduling_strategy"]
                ),
                "max_concurrency": opts["max_concurrency"],
                "concurrency_groups": _check_groups(opts["concurrency_groups"], self._methods, self.__name__),
                "max_task_retries": opts["max_task_retries"],
                "is_async": self._is_async,
            },
        )
        return ActorHandle(actor_hex, self.__name__, self._methods, opts["max_task_retries"])


def handle_from_table(actor_hex: str) -> ActorHandle[Any]:
    """A handle for an existing actor, from the actor table."""
    info = context.require_core().gcs.actor_info(actor_hex)
    if not info:
        raise ValueError(f"No actor {actor_hex} in the actor table")
    return ActorHandle(
        actor_hex,
        info["class_name"],
        json.loads(info.get("methods", "{}")),
        int(info.get("max_task_retries", 0)),
    )


class ActorHandle(Generic[T]):
    """A reference to an actor: ``handle.method.remote(...)`` calls it. Picklable.

    ``ActorHandle[Cls]`` (for type checkers) is a handle of an actor of class ``Cls``. Its
    methods are found at run time, so without rayr's mypy plugin ``handle.m`` is an
    ``ActorMethod`` returning ``Any``; with it, ``handle.m.remote(...)`` is checked against
    ``Cls.m`` and is an ``ObjectRef`` of what ``m`` returns.
    """

    def __init__(self, actor_id: str, class_name: str, methods: dict[str, Any], max_task_retries: int):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries

    def __getattr__(self, name: str) -> ActorMethod[..., Any]:
        methods = self.__dict__.get("_methods")
        if methods is None or name not in methods:
            raise AttributeError(
                f"'{self.__dict__.get('_class_name', 'Actor')}' actor has no method {name!r}"
            )
        method: ActorMethod[..., Any] = ActorMethod(self, name, _method_options(methods[name]))
        self.__dict__[name] = method  # made once: later lookups find it without __getattr__
        return method

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._max_task_retries))


class ActorMethod(Generic[P, Out]):
    """``handle.method``: call with ``.remote(...)``; ``.options(num_returns=...)`` first.

    ``P`` and ``Out`` are as in ``RemoteFunction``: the method's parameters (without
    ``self``) and what ``.remote()`` returns; rayr's mypy plugin fills them in.
    """

    def __init__(self, handle: ActorHandle[Any], name: str, options: dict[str, Any]):
        self._handle = handle
        self._name = name
        self._options = options
        self._num_returns = parse_num_returns(options.get("num_returns", 1))
        self._qualname = f"{handle._class_name}.{name}"
        self._task_options: TaskOptions | None = None  # made on the first call, then shared

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running "
            f"'{self._handle._class_name}.{self._name}()', try "
            f"'{self._handle._class_name}.{self._name}.remote()'."
        )

    @overload
    def options(self, *, num_returns: int | str, **options: Any) -> ActorMethod[P, Any]: ...

    @overload
    def options(self, **options: Any) -> ActorMethod[P, Out]: ...

    def options(self, **options: Any) -> ActorMethod[P, Any]:
        """A copy with some of ``METHOD_OPTIONS`` changed. (A ``num_returns`` here changes
        what ``.remote()`` returns, so type checkers see it as ``Any``.)"""
        unknown = sorted(set(options) - set(METHOD_OPTIONS))
        if unknown:
            raise ValueError(
                f"Invalid option(s) {unknown} for an actor method; valid options: {METHOD_OPTIONS}"
            )
        group = options.get("concurrency_group")
        if group is not None and (not isinstance(group, str) or not group):
            raise ValueError(f"concurrency_group must be a group's name, got {group!r}")
        if "retry_exceptions" in options:
            spec = retry_exceptions_spec(options["retry_exceptions"])
            options["retry_exceptions"] = spec if isinstance(spec, bool) else spec.hex()
        return ActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Out:
        """Call the method; returns as ``RemoteFunction.remote`` does."""
        core = context.require_core()
        num_returns = self._num_returns
        opts = self._task_options
        if opts is None:
            retry = self._options.get("retry_exceptions", False)
            opts = self._task_options = TaskOptions(
                resources={},
                shape="",
                num_returns=num_returns,
                max_retries=self._options.get("max_task_retries", self._handle._max_task_retries),
                retry_exceptions=retry if isinstance(retry, bool) else bytes.fromhex(retry),
                name=self._options.get("name") or self._qualname,
            )
        refs: list[ObjectRef[Any]] = core.submit_task(
            "",
            self._qualname,
            args,
            kwargs,
            opts,
            kind=ACTOR_CALL,
            actor_id=self._handle._actor_id,
            method=self._name,
            concurrency_group=self._options.get("concurrency_group") or "",
        )
        out: Out = remote_result(refs, num_returns)  # what the options say: a ref, None, ...
        return out
