"""rayr: the Ray Core programming model on a Redis control plane.

``import rayr as ray`` and a Ray Core program of tasks, put, get and wait runs unchanged.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rayr import actor, exceptions
from rayr.actor import ActorClass, ActorHandle, method
from rayr.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from rayr.exceptions import RuntimeEnvSetupError
from rayr.log_config import LoggingConfig
from rayr.object_ref import ObjectRef
from rayr.streaming import DynamicObjectRefGenerator, ObjectRefGenerator

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    # ``ray.util.ActorPool`` works after ``import rayr as ray``; the helpers in rayr.util are
    # built on this package's API, so it loads them on first use rather than importing them
    if name in ("util", "experimental"):
        return importlib.import_module(f"rayr.{name}")
    raise AttributeError(f"module 'rayr' has no attribute {name!r}")


__all__ = [
    "ActorClass",
    "ActorHandle",
    "LoggingConfig",
    "ObjectRef",
    "DynamicObjectRefGenerator",
    "ObjectRefGenerator",
    "RuntimeEnvSetupError",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "experimental",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "timeline",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "util",
    "wait",
]
