"""Setting a resolved runtime_env up on a node: packages unpacked once per node, a virtualenv
per distinct pip requirement set, cached and reused across tasks and jobs.

Used by raylets (before starting a worker for the env) and by the job supervisor (before
starting a submitted driver). Several processes of one host may race for the same package or
virtualenv: a file lock serializes them, and a finished one is marked by a file written last.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rayr.exceptions import RuntimeEnvSetupError
from rayr.runtime_env.validation import PACKAGE_SCHEME

READY = ".rayr-ready"
TAIL_CHARS = 3000


@dataclass
class WorkerEnv:
    """How to start a process inside an env."""

    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)  # variables to set on top of ours
    cwd: str | None = None

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}


@contextmanager
def _locked(path: str, deadline: float | None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise RuntimeEnvSetupError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


def ensure_package(uri: str, fetch: Callable[[str], bytes | None], root: str, deadline: float | None) -> str:
    """The directory holding the unpacked ``pkg://`` package (unpacked now if need be)."""
    digest = uri[len(PACKAGE_SCHEME):]
    target = os.path.join(root, f"pkg_{digest}")
    if os.path.isdir(target):
        return target
    with _locked(target + ".lock", deadline):
        if os.path.isdir(target):
            return target
        data = fetch(digest)
        if data is None:
            raise RuntimeEnvSetupError(f"package {uri} is not in the cluster's Redis (was it uploaded?)")
        tmp = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                path = zf.extract(info, tmp)
                mode = info.external_attr >> 16
                if mode and not info.is_dir():
                    os.chmod(path, mode & 0o777)
        os.rename(tmp, target)  # atomic: a directory that exists is complete
    return target


def _parent_site_dirs() -> list[str]:
    """Where this interpreter finds rayr and its dependencies, for the virtualenv to see too."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _run(cmd: list[str], deadline: float | None, what: str, log_path: str) -> None:
    timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=timeout, text=True, errors="replace")
    except subprocess.TimeoutExpired as err:
        text = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode(errors="replace")
        raise RuntimeEnvSetupError(
            f"{what} did not finish within the setup timeout ({timeout:.0f}s, runtime_env config "
            f"setup_timeout_seconds). Its last output:\n{_tail(text)}"
        ) from None
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n")
    if out.returncode != 0:
        raise RuntimeEnvSetupError(f"{what} failed (exit code {out.returncode}):\n{_tail(out.stdout)}")


def venv_dir(packages: list[str], root: str) -> str:
    key = json.dumps([packages, sys.executable, sys.version])
    return os.path.join(root, "pip_" + hashlib.sha256(key.encode()).hexdigest()[:16])


def ensure_venv(packages: list[str], root: str, deadline: float | None) -> str:
    """A virtualenv with ``packages`` installed, seeing this interpreter's packages too (rayr
    above all); created once per requirement set and reused. Returns its directory."""
    target = venv_dir(packages, root)
    if os.path.exists(os.path.join(target, READY)):
        return target
    with _locked(target + ".lock", deadline):
        if os.path.exists(os.path.join(target, READY)):
            return target
        shutil.rmtree(target, ignore_errors=True)  # a setup that died half-way
        log_path = target + ".log"
        _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", target],
             deadline, "creating the virtualenv", log_path)
        python = os.path.join(target, "bin", "python")
        site_dir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True).stdout.strip()
        if not os.path.isdir(site_dir):
            raise RuntimeEnvSetupError(f"the virtualenv {target} has no site-packages directory")
        # a nested venv does not see its parent venv's packages; site.addsitedir also runs
        # their .pth files (editable installs of rayr among them)
        with open(os.path.join(site_dir, "_rayr_parent.pth"), "w") as f:
            adds = "; ".join(f"site.addsitedir({d!r})" for d in _parent_site_dirs())
            f.write(f"import site; {adds}\n")
        if subprocess.run([python, "-c", "import pip"], capture_output=True).returncode != 0:
            _run([python, "-m", "ensurepip"], deadline, "installing pip into the virtualenv", log_path)
        requirements = os.path.join(target, "requirements.txt")
        with open(requirements, "w") as f:
            f.write("\n".join(packages) + "\n")
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        _run([*pip, "-r", requirements],
             deadline, f"pip install {' '.join(packages)}", log_path)
        with open(os.path.join(target, READY), "w") as f:
            f.write(str(time.time()))
    return target


def prepare(
    resolved: dict[str, Any],
    *,
    fetch: Callable[[str], bytes | None],
    session_dir: str,
    temp_dir: str,
    timeout: float | None,
) -> WorkerEnv:
    """Set ``resolved`` up on this node; how to start a process in it.

    Raises:
        RuntimeEnvSetupError: a step failed or ran out of time; carries the tail of its output.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    root = os.path.join(session_dir, "runtime_resources")
    out = WorkerEnv(env=dict(resolved.get("env_vars", {})))
    paths = []
    if "working_dir" in resolved:
        out.cwd = ensure_package(resolved["working_dir"], fetch, root, deadline)
        paths.append(out.cwd)
    for uri in resolved.get("py_modules", []):
        paths.append(ensure_package(uri, fetch, root, deadline))
    if resolved.get("pip", {}).get("packages"):
        venv = ensure_venv(resolved["pip"]["packages"], os.path.join(temp_dir, "runtime_envs"), deadline)
        out.python = os.path.join(venv, "bin", "python")
        out.env["VIRTUAL_ENV"] = venv
        out.env["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "")
    if paths:
        existing = out.env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        out.env["PYTHONPATH"] = os.pathsep.join([*paths, *([existing] if existing else [])])
    return out
