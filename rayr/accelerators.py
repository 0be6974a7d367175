"""GPUs on this host: how many, of what type, and which device ids a node hands out.

A node's GPU count is ``--num-gpus`` when given, else what ``CUDA_VISIBLE_DEVICES`` lists when
it is set, else what ``nvidia-smi`` reports. Its raylet gives each task or actor that asks for
GPUs specific ids, and the worker that runs it sees exactly those in ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
TYPE_PREFIX = "accelerator_type:"  # the resource a node of a known GPU type has (amount 1)
_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro"}


def _visible(env: Mapping[str, str]) -> list[str] | None:
    """The ids ``CUDA_VISIBLE_DEVICES`` lists; None when it is not set."""
    value = env.get(VISIBLE_DEVICES)
    if value is None:
        return None
    if value.strip() in ("", "NoDevFiles"):
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def _nvidia_smi_names() -> list[str]:
    """One product name per GPU nvidia-smi sees; [] without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def type_of(product_name: str) -> str | None:
    """Ray's accelerator type for an NVIDIA product name, e.g. ``NVIDIA A100-SXM4-40GB`` -> ``A100``."""
    words = [w for w in product_name.replace("-", " ").split() if w.lower() not in _VENDOR_WORDS]
    if not words:
        return None
    if words[0].upper() in ("RTX", "GTX") and len(words) > 1:
        return words[0].upper() + words[1]
    return words[0]


def detect(env: Mapping[str, str] | None = None) -> tuple[int, str | None]:
    """(GPUs on this host, their accelerator type or None)."""
    env = os.environ if env is None else env
    names = _nvidia_smi_names()
    visible = _visible(env)
    count = len(names) if visible is None else len(visible)
    kind = type_of(names[0]) if names and count else None
    return count, kind


def node_gpu_ids(total: float, env: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
    """(the device ids a node with ``total`` GPUs hands out, whether they came from
    ``CUDA_VISIBLE_DEVICES``): its first entries when set, else ``0..n-1``."""
    env = os.environ if env is None else env
    count = math.ceil(total - 1e-9) if total > 0 else 0
    visible = _visible(env)
    if visible is not None and len(visible) >= count:
        return visible[:count], True
    return [str(i) for i in range(count)], False


def _is_gpu(name: str) -> bool:
    return name == "GPU" or name.startswith("GPU_group_")


def gpu_amount(request: Mapping[str, float]) -> float:
    """How much GPU a resource request asks for, a placement group's renamed GPUs included."""
    return sum(v for k, v in request.items() if _is_gpu(k))


def without_gpus(request: Mapping[str, float]) -> dict[str, float]:
    """The request less its GPUs (what a worker blocked in ``get`` gives back)."""
    return {k: v for k, v in request.items() if not _is_gpu(k)}


def only_gpus(request: Mapping[str, float]) -> dict[str, float]:
    """The request's GPUs alone."""
    return {k: v for k, v in request.items() if _is_gpu(k)}
