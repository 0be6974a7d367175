"""``@rayr.remote`` functions: options, validation, and ``.remote()`` submission."""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from rayr import context, serialization
from rayr.accelerators import TYPE_PREFIX
from rayr.object_ref import ObjectRef
from rayr.resources import shape_key
from rayr.runtime_env.validation import validate as validate_runtime_env
from rayr.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from rayr.streaming import remote_result
from rayr.task_spec import DYNAMIC, STREAMING, TaskOptions

DEFAULT_TASK_OPTIONS: dict[str, Any] = {
    "num_cpus": 1,
    "num_gpus": 0,
    "memory": 0,
    "resources": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": "",
    "scheduling_strategy": "DEFAULT",
    "runtime_env": None,
    "accelerator_type": None,
}
SCHEDULING_STRATEGIES = ("DEFAULT", "SPREAD")
ACCELERATOR_TYPE_ASK = 0.001

# For type checkers: a remote function's parameters, and what its ``.remote()`` returns
# (``ObjectRef[R]`` of a function returning ``R``, ``ObjectRefGenerator[T]`` of a generator)
P = ParamSpec("P")
Out = TypeVar("Out", covariant=True)


def retry_exceptions_spec(retry: Any) -> bool | bytes:
    """The spec form of ``retry_exceptions``: a bool, or the pickled list of classes.

    Raises:
        ValueError: neither a bool nor a list of exception classes.
    """
    if isinstance(retry, bool):
        return retry
    if isinstance(retry, list | tuple) and all(isinstance(c, type) and issubclass(c, BaseException)
                                              for c in retry):
        return serialization.pickle_code(list(retry))
    raise ValueError(f"option 'retry_exceptions' must be a bool or a list of exception classes, "
                     f"got {retry!r}")


def _number(name: str, value: Any, minimum: float = 0) -> float:
    # the range test also refuses NaN, which compares false with everything
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not minimum <= float(value) < math.inf):
        raise ValueError(f"option {name!r} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_strategy(strategy: Any) -> Any:
    """A valid ``scheduling_strategy`` value, or ValueError naming the valid ones."""
    if strategy in SCHEDULING_STRATEGIES or isinstance(
        strategy, NodeAffinitySchedulingStrategy | PlacementGroupSchedulingStrategy
    ):
        return strategy
    raise ValueError(
        f"option 'scheduling_strategy' must be one of {SCHEDULING_STRATEGIES} or a "
        f"NodeAffinitySchedulingStrategy, got {strategy!r}"
    )


def parse_num_returns(value: Any) -> int:
    """An int >= 0, "streaming" (returned as STREAMING) or "dynamic" (DYNAMIC)."""
    if value == "streaming":
        return STREAMING
    if value == "dynamic":
        return DYNAMIC
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option 'num_returns' must be an int >= 0, 'streaming' or 'dynamic', got {value!r}")
    return value


def default_num_returns(fn: Any) -> Any:
    """Generator functions stream their items by default, as in Ray."""
    return "streaming" if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn) else 1


def _resource_request(opts: dict[str, Any]) -> dict[str, float]:
    """The resources a task with these (completed) options asks for."""
    request: dict[str, float] = {}
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        amount = _number(option, opts[option])
        if amount:
            request[resource] = amount
    if request.get("GPU", 0) > 1 and not request["GPU"].is_integer():
        raise ValueError(f"option 'num_gpus' above 1 must be a whole number (a task gets whole GPUs, "
                         f"or a share of one), got {opts['num_gpus']!r}")
    custom = opts["resources"] or {}
    if not isinstance(custom, dict):
        raise ValueError(f"option 'resources' must be a dict of name -> amount, got {custom!r}")
    for name, amount in custom.items():
        if name in ("CPU", "GPU", "memory"):
            raise ValueError(
                f"Use the {'num_cpus' if name == 'CPU' else 'num_gpus' if name == 'GPU' else 'memory'}"
                f" option instead of resources={{{name!r}: ...}}"
            )
        if not isinstance(name, str) or not name or "," in name or "=" in name:
            raise ValueError(f"resource names must be non-empty strings without ',' or '=', got {name!r}")
        if _number(f"resources[{name!r}]", amount):
            request[name] = float(amount)
    if opts["accelerator_type"] is not None:
        kind = opts["accelerator_type"]
        if not isinstance(kind, str) or not kind or "," in kind or "=" in kind:
            raise ValueError(f"option 'accelerator_type' must be a type name such as 'A100' "
                             f"(see rayr.util.accelerators), got {kind!r}")
        # as in Ray: a sliver of the resource every node of that GPU type has
        request[TYPE_PREFIX + kind] = ACCELERATOR_TYPE_ASK
    return request


def validate_task_options(options: dict[str, Any]) -> TaskOptions:
    """Check every option once, when the function or ``.options()`` is defined.

    Raises:
        ValueError: an unknown option or a bad value; the message names it and what is valid.
    """
    unknown = sorted(set(options) - set(DEFAULT_TASK_OPTIONS))
    if unknown:
        raise ValueError(
            f"Invalid option(s) {', '.join(map(repr, unknown))} for a remote function. "
            f"Valid options: {', '.join(DEFAULT_TASK_OPTIONS)}."
        )
    opts = {**DEFAULT_TASK_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    request = _resource_request(opts)
    num_returns = parse_num_returns(opts["num_returns"])
    max_retries = opts["max_retries"]
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
        raise ValueError(
            f"option 'max_retries' must be an int >= -1 (-1 retries forever), got {max_retries!r}"
        )
    retry_spec = retry_exceptions_spec(opts["retry_exceptions"])
    strategy = check_strategy(opts["scheduling_strategy"])
    if not isinstance(opts["name"], str):
        raise ValueError(f"option 'name' must be a string, got {opts['name']!r}")
    return TaskOptions(
        resources=request,
        shape=shape_key(request),
        num_returns=num_returns,
        max_retries=max_retries,
        retry_exceptions=retry_spec,
        name=opts["name"],
        strategy=strategy,
        runtime_env=validate_runtime_env(opts["runtime_env"]),
    )


class _Exported:
    """The pickled function and its digest, computed once and shared by ``.options()`` copies."""

    __slots__ = ("fn", "data", "digest")

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.data: bytes | None = None
        self.digest = ""

    def pickled(self) -> bytes:
        if self.data is None:
            self.data = serialization.pickle_code(self.fn)
            self.digest = hashlib.sha1(self.data).hexdigest()
        return self.data


class RemoteFunction(Generic[P, Out]):
    """A function that runs as a task: call ``f.remote(...)``, not ``f(...)``.

    For type checkers ``@rayr.remote`` turns ``def f(x: int) -> str`` into a
    ``RemoteFunction[[int], ObjectRef[str]]``: ``P`` is the function's parameters and ``Out``
    what ``.remote()`` returns. Arguments are checked against ``P`` by rayr's mypy plugin
    (``rayr.mypy_plugin``), which also accepts an ``ObjectRef[T]`` where ``T`` is expected.
    """

    def __init__(self, fn: Callable[P, Any], options: dict[str, Any], _exported: _Exported | None = None):
        self._function = fn
        self._options = dict(options)
        self._options.setdefault("num_returns", default_num_returns(fn))
        self._task_options = validate_task_options(self._options)
        self._exported = _exported or _Exported(fn)
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self._name)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self.__module__}.{self._name}()', try '{self.__module__}.{self._name}.remote()'."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteFunction, (self._function, self._options))

    @overload
    def options(self, *, num_returns: int | str, **options: Any) -> RemoteFunction[P, Any]: ...

    @overload
    def options(self, **options: Any) -> RemoteFunction[P, Out]: ...

    def options(self, **options: Any) -> RemoteFunction[P, Any]:
        """A copy with some options changed; the original keeps its own. (A ``num_returns``
        here changes what ``.remote()`` returns, so type checkers see it as ``Any``.)"""
        return RemoteFunction(self._function, {**self._options, **options}, self._exported)

    def remote(self, *args: Any, **kwargs: Any) -> Out:
        """Submit a task; returns an ObjectRef, a list of them, None for num_returns=0, or an
        ObjectRefGenerator for a streaming (generator) task."""
        core = context.require_core()
        exported = self._exported
        exported.pickled()
        key = core.export_function(exported.digest, exported.pickled)
        refs: list[ObjectRef[Any]] = core.submit_task(key, self._name, args, kwargs, self._task_options)
        out: Out = remote_result(refs, self._task_options.num_returns)  # what the options say
        return out
