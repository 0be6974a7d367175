"""Ray's ``ray.experimental``: ``tqdm_ray`` (progress bars in tasks, drawn by the driver)."""

from __future__ import annotations

import importlib
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    # ``ray.experimental.tqdm_ray`` works as an attribute path after ``import rayr as ray``
    if name == "tqdm_ray":
        return importlib.import_module("rayr.experimental.tqdm_ray")
    raise AttributeError(f"module 'rayr.experimental' has no attribute {name!r}")


__all__ = ["tqdm_ray"]
