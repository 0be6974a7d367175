"""Forked workers: a process that has already imported the worker's code forks new workers.

Starting ``python -m rayr.worker`` costs ~0.25 s of CPU, most of it imports (redis-py,
pydantic, cloudpickle); a fork of a process that has them loaded costs a few milliseconds.
The raylet starts one zygote with a socketpair: forked from itself before it starts any
thread (or, when it cannot fork safely, as ``python -m rayr.raylet.zygote``); to start a
worker it sends the worker's arguments, its log path and its end of the worker socketpair
(SCM_RIGHTS). The zygote forks; the child points its output at the log, dies with the zygote
(which dies with the raylet), and runs the worker's ``main``. The zygote reaps its children
and reports each exit code, so the raylet tracks forked workers much as it tracks ``Popen``s.
The zygote itself starts no thread and opens no connection, so forking it is safe.
Workers of a runtime env are still started as fresh interpreters (another python, env vars).
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading

from rayr import procs
from rayr.private_files import FILE_MODE, open_log

_MAX_MSG = 1 << 16


class ForkedProcess(procs.PidProcess):
    """A worker forked by the zygote, which reaps it and reports its exit code to us."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid = pid
        self.args = ["<forked worker>"]
        self._zygote = zygote

    @property
    def returncode(self) -> int | None:
        return self._zygote.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def _waited(self) -> int | None:
        if self.returncode is None and not self._zygote.alive():
            # its children die with it, and nothing is left to report them
            self._zygote.exits.setdefault(self.pid, -signal.SIGKILL)
        return self.returncode


class Zygote:
    """The raylet's side: starts the zygote and asks it for workers."""

    def __init__(self, log_path: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        self.proc: subprocess.Popen | procs.ForkedChild
        with open_log(log_path) as log:
            if procs.can_fork():  # we have what a worker imports already: share it
                self.proc = procs.fork_call(
                    "rayr-zygote", lambda: serve(fd), log=log, death_signal=signal.SIGKILL, keep_fds=[fd]
                )
            else:
                self.proc = procs.spawn(
                    [sys.executable, "-P", "-m", "rayr.raylet.zygote", "--fd", str(fd)],
                    log=log, death_signal=signal.SIGKILL, pass_fds=[fd],
                )
        theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._broken = False
        self._pids: queue.Queue[int] = queue.Queue()
        self.exits: dict[int, int] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._read, name="rayr-zygote", daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = 0.0) -> bool:
        return self._ready.wait(timeout) and self.alive()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MSG)
            except OSError:
                return
            if not data:
                return
            kind, *rest = pickle.loads(data)
            if kind == "ready":
                self._ready.set()
            elif kind == "pid":
                self._pids.put(rest[0])
            elif kind == "exit":
                self.exits[rest[0]] = rest[1]

    def fork(self, argv: list[str], log_path: str, conn_fd: int) -> ForkedProcess | None:
        """A forked worker running ``rayr.worker`` with ``argv`` (where ``{fd}`` stands for the
        number its end of the socketpair gets); None if the zygote cannot (start it anew)."""
        # at the node's start the zygote is still importing: waiting for it costs no more than
        # a fresh interpreter importing the same modules (and leaves the CPU to one of them)
        if not self.ready(timeout=5.0):
            return None
        with self._lock:
            if self._broken:
                return None
            try:
                socket.send_fds(self._sock, [pickle.dumps((argv, log_path))], [conn_fd])
                pid = self._pids.get(timeout=5)
            except (OSError, queue.Empty):
                # a late answer would be taken for the next request's: stop asking this zygote
                self._broken = True
                return None
        return ForkedProcess(pid, self)

    def stop(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
        procs.stop([self.proc], timeout=2)


# ------------------------------------------------------------------ the zygote process
def _child(argv: list[str], log_path: str, fd: int, control: socket.socket) -> None:
    """In the forked child: become a worker."""
    code = 1
    try:
        gc.freeze()  # what the zygote loaded stays shared: no collection dirties its pages
        control.close()
        procs.set_process_name("rayr-worker")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        procs.set_parent_death_signal(signal.SIGKILL)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)  # task output
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from rayr.worker import executor

        argv = [a.replace("{fd}", str(fd)) for a in argv]
        sys.argv = ["rayr.worker", *argv]
        executor.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(pickle.dumps(("exit", pid, os.waitstatus_to_exitcode(status))))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rayr.raylet.zygote")
    parser.add_argument("--fd", type=int, required=True)
    opts = parser.parse_args(argv)
    serve(opts.fd)


def serve(fd: int) -> None:
    """Fork a worker for each request on the control socket ``fd``, until the raylet goes."""
    # what every worker needs, loaded once here (no threads, no connections)
    import rayr.worker.actor_runtime  # noqa: F401
    import rayr.worker.executor  # noqa: F401

    control = socket.socket(fileno=fd)
    control.send(pickle.dumps(("ready",)))
    while True:
        readable, _, _ = select.select([control], [], [], 0.05)
        _reap(control)
        if not readable:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, _MAX_MSG, 1)
        except OSError:
            return
        if not data:
            return  # the raylet is gone
        argv_, log_path = pickle.loads(data)
        pid = os.fork()
        if pid == 0:
            _child(argv_, log_path, fds[0], control)
        os.close(fds[0])
        control.send(pickle.dumps(("pid", pid)))


if __name__ == "__main__":
    main()
