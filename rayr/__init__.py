"""rayr: the Ray Core programming model on a Redis control plane.

``import rayr as ray`` and a Ray Core program of tasks, put, get and wait runs unchanged.
"""

from __future__ import annotations

from rayr import exceptions
from rayr.api import (
    available_resources,
    cluster_resources,
    get,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from rayr.object_ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "__version__",
    "available_resources",
    "cluster_resources",
    "exceptions",
    "get",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
