"""rayr: the Ray Core programming model on a Redis control plane.

``import rayr as ray`` and a Ray Core program of tasks, put, get and wait runs unchanged.
"""

from __future__ import annotations

from rayr import actor, exceptions, util
from rayr.actor import ActorClass, ActorHandle, method
from rayr.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from rayr.exceptions import RuntimeEnvSetupError
from rayr.object_ref import ObjectRef
from rayr.streaming import ObjectRefGenerator

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "ObjectRefGenerator",
    "RuntimeEnvSetupError",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_runtime_context",
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
