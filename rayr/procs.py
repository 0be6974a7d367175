"""Starting and stopping the processes rayr owns, by PID, with fate sharing."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1
_libc: Any = None


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    if _libc:
        _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def spawn(
    cmd: Sequence[str],
    *,
    log: IO[bytes] | int | None = None,
    death_signal: int | None = signal.SIGTERM,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    new_session: bool = False,
    cwd: str | None = None,
) -> subprocess.Popen:
    """Start ``cmd``; with ``death_signal`` it receives that signal when we die, however we die."""

    def before_exec() -> None:
        if death_signal is not None:
            set_parent_death_signal(death_signal)

    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        preexec_fn=before_exec if death_signal is not None else None,
        pass_fds=tuple(pass_fds),
        env=env,
        start_new_session=new_session,
        close_fds=True,
        cwd=cwd,
    )


def stop(procs: Sequence[Any], timeout: float = 5.0) -> None:
    """SIGTERM each process (a ``Popen``, or anything with its poll/send_signal/wait/kill), wait,
    then SIGKILL whatever is left; reaps them all."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_pid(pid: int, timeout: float = 5.0) -> bool:
    """Stop a process we started in an earlier invocation (not our child). True if it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
