"""Starting and stopping the processes rayr owns, by PID, with fate sharing."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_libc: Any = None


def _prctl(option: int, arg: Any) -> None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    if _libc:
        _libc.prctl(option, arg, 0, 0, 0)


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def set_process_name(name: str) -> None:
    """Name this process as ``ps -e``, ``top`` and ``psutil``'s ``name()`` show it (15 bytes at
    most); a forked daemon would otherwise look like a copy of the program it was forked from."""
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def spawn(
    cmd: Sequence[str],
    *,
    log: IO[bytes] | int | None = None,
    death_signal: int | None = signal.SIGTERM,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    new_session: bool = False,
    cwd: str | None = None,
    umask: int | None = None,
) -> subprocess.Popen:
    """Start ``cmd``; with ``death_signal`` it receives that signal when we die, however we die;
    with ``umask``, the child's files are created under it (ours is left alone)."""

    def before_exec() -> None:
        if death_signal is not None:
            set_parent_death_signal(death_signal)
        if umask is not None:
            os.umask(umask)

    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        preexec_fn=before_exec if death_signal is not None or umask is not None else None,
        pass_fds=tuple(pass_fds),
        env=env,
        start_new_session=new_session,
        close_fds=True,
        cwd=cwd,
    )


def stop(procs: Sequence[Any], timeout: float = 5.0) -> None:
    """SIGTERM each process (a ``Popen``, or anything with its poll/send_signal/wait/kill), wait,
    then SIGKILL whatever is left; reaps them all. For our own children only: an unreaped child
    keeps its pid, so it cannot be mistaken for another process. Processes another invocation
    started are stopped with stop_all, after recorded_process confirmed who they are."""
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


# ------------------------------------------------------------------ recorded processes
# A recorded create time matches within this many seconds: psutil derives it from the boot time,
# which the kernel may report a second apart in two processes. A pid reused within that second
# would pass, but pids are handed out in order: it takes pid_max process starts in that second.
CREATE_TIME_SLACK_S = 1.0


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if it is gone already."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def recorded_process(pid: int, created: float | None) -> psutil.Process | None:
    """The live process that a record of (pid, create time) names, None if it has ended or the
    pid names another process now. A record without a create time (written by rayr before it
    kept them) is trusted when the command line still looks like rayr's or Redis's."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if created is None:
            cmd = " ".join(proc.cmdline())
            return proc if "rayr" in cmd or "redis-server" in cmd or "valkey-server" in cmd else None
        return proc if abs(proc.create_time() - created) <= CREATE_TIME_SLACK_S else None
    except psutil.Error:
        return None


def stop_all(processes: Sequence[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM every one of ``processes`` (not our children) at once, wait for them together,
    SIGKILL whatever is left after ``timeout``. psutil re-checks each one's identity before
    signalling, so a process that ended meanwhile is not mistaken for its pid's next owner."""
    for proc in processes:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    alive = _wait_exited(processes, timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _wait_exited(alive, 5.0)


def _wait_exited(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; returns those still running after ``timeout``.

    A zombie has exited: daemons of an earlier `rayr start` are orphans, and an init that reaps
    them late (a container's, every ~2 s) would otherwise make each wait that long
    (psutil.wait_procs counts a zombie as running).
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    alive = list(processes)
    while alive:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return alive


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has; see _wait_exited)."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


# ------------------------------------------------------------------ forked daemons
def can_fork() -> bool:
    """Whether this process may fork a daemon instead of starting a new interpreter.

    Only with one thread: a fork copies just the calling thread, and a lock another thread
    held at that moment would stay locked in the child for good.
    """
    return hasattr(os, "fork") and threading.active_count() == 1


class PidProcess:
    """A process known by its pid, with the part of ``Popen``'s interface rayr uses; subclasses
    say how its exit is learnt (``poll``)."""

    pid: int
    args: list[str]

    def poll(self) -> int | None:
        raise NotImplementedError

    def _waited(self) -> int | None:
        """What ``wait`` checks each round: ``poll`` unless a subclass knows more."""
        return self.poll()

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self._waited()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedChild(PidProcess):
    """A daemon forked from this process (we reap it ourselves)."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.args = [f"<forked {name}>"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: it is gone all the same
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_call(
    name: str,
    target: Callable[[], object],
    *,
    log: IO[bytes] | None = None,
    death_signal: int | None = signal.SIGTERM,
    new_session: bool = False,
    keep_fds: Sequence[int] = (),
) -> ForkedChild:
    """Run ``target()`` in a forked child set up like a freshly started daemon; see can_fork.

    The child gets what a new interpreter would have had and nothing of ours: stdin from
    /dev/null, stdout and stderr into ``log``, no other inherited descriptor but ``keep_fds``,
    default signal handlers, logging and warning filters. It leaves with ``os._exit``, so
    none of our atexit handlers or buffers run twice. Forking costs milliseconds where a new
    interpreter costs ~0.2 s of imports, and the pages it shares with us cost no memory.
    ``name`` becomes the child's process name (see set_process_name).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the child would print what we buffered a second time
        except (AttributeError, ValueError, OSError):
            pass
    log_fd = log.fileno() if log is not None else None
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return ForkedChild(pid, name)
    code = 1
    try:
        # objects inherited from us are never collected here: their pages stay shared, and
        # no finalizer of ours closes a descriptor number this process has reused
        gc.freeze()
        set_process_name(name)
        if new_session:
            os.setsid()
        if death_signal is not None:
            set_parent_death_signal(death_signal)
            if os.getppid() != parent:  # we died before the kernel could be told
                os._exit(1)
        _become_daemon(log_fd, keep_fds)
        target()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    raise AssertionError("unreachable")


def _become_daemon(log_fd: int | None, keep_fds: Sequence[int]) -> None:
    import logging
    import warnings

    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    out = devnull if log_fd is None else log_fd
    os.dup2(out, 1)
    os.dup2(out, 2)
    keep = sorted({0, 1, 2, *keep_fds})
    for low, high in zip(keep, [*keep[1:], _max_fd()], strict=True):
        os.closerange(low + 1, high)
    # our sys.stdout may be anything (a test runner's capture, say); the daemon's is fd 1
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
                signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    warnings.resetwarnings()  # e.g. a test runner's "error" filters


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
