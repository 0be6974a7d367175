"""Checking a ``runtime_env`` dict and merging two of them, as Ray does. Pure: no I/O
beyond reading a requirements file named by ``pip``."""

from __future__ import annotations

import base64
import importlib
import os
import pickle
import sys
import types
from typing import Any

VALID_FIELDS = ("env_vars", "working_dir", "py_modules", "pip", "config", "excludes",
                "worker_process_setup_hook")
# Ray's fields that need what rayr does not run: refused, saying why
UNSUPPORTED_FIELDS = {
    "conda": "rayr installs packages with pip into a virtualenv per requirement set (use 'pip')",
    "uv": "rayr installs packages with pip into a virtualenv per requirement set (use 'pip')",
    "container": "rayr runs workers as processes on the node, not in containers (run the whole "
                 "node in a container instead: see the Dockerfile)",
    "image_uri": "rayr runs workers as processes on the node, not in containers (run the whole "
                 "node in a container instead: see the Dockerfile)",
    "nsight": "rayr does not start workers under the Nsight profiler",
    "java_jars": "rayr runs Python workers only",
}
HOOK_PICKLE = "pickle:"  # a setup hook given as a callable travels pickled, base64-encoded
CONFIG_FIELDS = ("setup_timeout_seconds", "eager_install")
DEFAULT_SETUP_TIMEOUT_S = 600
PACKAGE_SCHEME = "pkg://"  # a working_dir or py_modules entry already uploaded to the cluster


def _path_like(value: Any) -> bool:
    return isinstance(value, str | os.PathLike)


def validate(runtime_env: Any) -> dict[str, Any] | None:
    """The runtime_env checked and normalized (``None`` stays ``None``).

    Local paths are not checked here (that happens when the env is packaged, on first use),
    so a function decorated with a runtime_env can be unpickled on any node.

    Raises:
        ValueError: an unknown field or a bad value; the message names it and what is valid.
    """
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, dict):
        raise ValueError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
    unsupported = sorted(str(k) for k in runtime_env if k in UNSUPPORTED_FIELDS)
    if unsupported:
        raise ValueError("; ".join(f"runtime_env field {name!r} is not supported: {UNSUPPORTED_FIELDS[name]}"
                                   for name in unsupported))
    unknown = sorted(str(k) for k in runtime_env if k not in VALID_FIELDS)
    if unknown:
        raise ValueError(
            f"Unknown runtime_env field(s) {', '.join(map(repr, unknown))}. Valid fields: "
            f"{', '.join(VALID_FIELDS)} (conda, container and uv are not supported by rayr)."
        )
    out: dict[str, Any] = {}
    for name, value in runtime_env.items():
        if value is None:
            continue
        out[name] = _CHECKS[name](value)
    return out


def _env_vars(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"runtime_env 'env_vars' must be a dict of str -> str, got {value!r}")
    return dict(value)


def _working_dir(value: Any) -> str:
    if not _path_like(value) or not os.fspath(value):
        raise ValueError(
            f"runtime_env 'working_dir' must be a local directory, a .zip file or a {PACKAGE_SCHEME} "
            f"URI, got {value!r}"
        )
    return os.fspath(value)


def _py_modules(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"runtime_env 'py_modules' must be a list of paths or modules, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, types.ModuleType):
            path = getattr(item, "__file__", None)
            if not path:
                raise ValueError(f"runtime_env 'py_modules': module {item.__name__} has no file")
            # a package ships its directory, a plain module its file
            out.append(os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path)
        elif _path_like(item) and os.fspath(item):
            out.append(os.fspath(item))
        else:
            raise ValueError(f"runtime_env 'py_modules' entries must be paths or modules, got {item!r}")
    return out


def _pip(value: Any) -> dict[str, Any]:
    """``{"packages": [...]}``; a str is a requirements file, read now."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"packages", "pip_check", "pip_version"})
        if unknown or "packages" not in value:
            raise ValueError(
                "runtime_env 'pip' as a dict needs 'packages' (and may have pip_check, "
                f"pip_version); got {value!r}"
            )
        packages = value["packages"]
    else:
        packages = value
    if _path_like(packages):
        path = os.path.abspath(os.fspath(packages))
        if not os.path.isfile(path):
            raise ValueError(f"runtime_env 'pip': the requirements file {path} does not exist")
        with open(path) as f:
            packages = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]
    if not isinstance(packages, list | tuple) or not all(isinstance(p, str) and p.strip() for p in packages):
        raise ValueError(
            "runtime_env 'pip' must be a list of requirement strings or a requirements file "
            f"path, got {value!r}"
        )
    return {"packages": [p.strip() for p in packages]}


def _config(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"runtime_env 'config' must be a dict, got {value!r}")
    unknown = sorted(set(value) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown runtime_env 'config' field(s) {unknown}. Valid: {', '.join(CONFIG_FIELDS)}."
        )
    out: dict[str, Any] = {}
    timeout = value.get("setup_timeout_seconds")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or (timeout <= 0 and timeout != -1):
            raise ValueError(
                "runtime_env config 'setup_timeout_seconds' must be an int > 0 (or -1 for none), "
                f"got {timeout!r}"
            )
        out["setup_timeout_seconds"] = timeout
    eager = value.get("eager_install")
    if eager is not None:
        if not isinstance(eager, bool):
            raise ValueError(f"runtime_env config 'eager_install' must be a bool, got {eager!r}")
        out["eager_install"] = eager
    return out


def _setup_hook(value: Any) -> str:
    """``module.function`` as given, or a callable pickled (``pickle:<base64>``): what each
    worker process of the env calls once, before its first task."""
    if callable(value):
        return HOOK_PICKLE + base64.b64encode(_pickle_by_value(value)).decode()
    if isinstance(value, str) and (value.startswith(HOOK_PICKLE) or (
            "." in value and all(part.isidentifier() for part in value.split(".")))):
        return value
    raise ValueError("runtime_env 'worker_process_setup_hook' must be a callable or a "
                     f"'module.function' name, got {value!r}")


def _pickle_by_value(fn: Any) -> bytes:
    """The hook pickled with its module's code, not a reference to it: a worker runs it when
    it starts, before it has joined any job, so the driver's modules are not importable yet."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(module, "__file__", None) or ""
    by_value = module is not None and bool(path) and module.__name__ not in sys.stdlib_module_names \
        and "site-packages" not in path
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(fn, protocol=5)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def run_setup_hook(hook: str) -> None:
    """Call a worker process setup hook (in the worker, before its first task)."""
    if hook.startswith(HOOK_PICKLE):
        fn = pickle.loads(base64.b64decode(hook[len(HOOK_PICKLE):]))  # cloudpickle's output
    else:
        module, _, name = hook.rpartition(".")
        fn = getattr(importlib.import_module(module), name)
    fn()


def _excludes(value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"runtime_env 'excludes' must be a list of patterns, got {value!r}")
    return list(value)


_CHECKS = {
    "env_vars": _env_vars,
    "working_dir": _working_dir,
    "py_modules": _py_modules,
    "pip": _pip,
    "config": _config,
    "excludes": _excludes,
    "worker_process_setup_hook": _setup_hook,
}


def merge(parent: dict[str, Any] | None, child: dict[str, Any] | None) -> dict[str, Any]:
    """The env a task runs in: its own fields override its parent's (the job's, or the
    submitting task's); ``env_vars`` and ``config`` are merged key by key, the child winning."""
    out = dict(parent or {})
    for name, value in (child or {}).items():
        if name in ("env_vars", "config") and isinstance(out.get(name), dict):
            out[name] = {**out[name], **value}
        else:
            out[name] = value
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


def setup_timeout(env: dict[str, Any]) -> float | None:
    """Seconds a node may spend setting the env up; None for no limit."""
    value = env.get("config", {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    return None if value == -1 else float(value)


def eager_install(env: dict[str, Any]) -> bool:
    return bool(env.get("config", {}).get("eager_install", True))
