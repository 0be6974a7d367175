"""Worker processes of one raylet: launching them and talking to them over socketpairs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from rayr import procs, protocol
from rayr.private_files import open_log
from rayr.raylet.scheduler import split_kind
from rayr.raylet.zygote import ForkedProcess, Zygote
from rayr.runtime_env.installer import WorkerEnv


@dataclass
class WorkerHandle:
    worker_id: str
    proc: subprocess.Popen | ForkedProcess
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    env: str = ""  # its kind: runtime env hash ("" for the default env) and GPU ids it sees


PIDS_KEPT = 10_000


class WorkerPool:
    """Launches ``python -m rayr.worker`` processes bound to this raylet."""

    def __init__(self, base_args: list[str], log_dir: str, zygote: bool = True) -> None:
        self._base_args = base_args
        self._log_dir = log_dir
        self.workers: dict[str, WorkerHandle] = {}
        # worker id -> pid of the workers started lately, gone ones too (`rayr logs worker --pid`)
        self.pids: OrderedDict[str, int] = OrderedDict()
        # workers of the default env are forked from a zygote (a few ms instead of ~0.25 s)
        self.zygote = Zygote(os.path.join(log_dir, "zygote.log")) if zygote else None

    def start(self, kind: str = "", worker_env: WorkerEnv | None = None) -> WorkerHandle:
        """Launch a worker of ``kind``: in a runtime env, with its interpreter, variables and
        directory; seeing the GPU ids the kind names."""
        worker_id = os.urandom(12).hex()
        python = worker_env.python if worker_env is not None else sys.executable
        env, devices = split_kind(kind)
        extra = ["--runtime-env", env] if env else []
        if devices:
            extra += ["--gpu-ids", devices]
        log_path = os.path.join(self._log_dir, f"worker-{worker_id}.log")
        args = ["--worker-id", worker_id, "--cancel-file", self.cancel_file(worker_id),
                *self._base_args, *extra]
        ours, theirs = socket.socketpair()
        proc: subprocess.Popen | ForkedProcess | None = None
        try:
            if self.zygote is not None and worker_env is None:
                proc = self.zygote.fork(["--fd", "{fd}", *args], log_path, theirs.fileno())
            if proc is None:
                with open_log(log_path) as log:  # 0600: task output
                    proc = procs.spawn(
                        [python, "-P", "-m", "rayr.worker", "--fd", str(theirs.fileno()), *args],
                        log=log,
                        death_signal=signal.SIGKILL,
                        pass_fds=[theirs.fileno()],
                        env=worker_env.environ() if worker_env is not None else None,
                        cwd=worker_env.cwd if worker_env is not None else None,
                    )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        handle = WorkerHandle(worker_id, proc, conn, env=kind)
        self.workers[worker_id] = handle
        self.pids[worker_id] = proc.pid
        if len(self.pids) > PIDS_KEPT:
            self.pids.popitem(last=False)
        return handle

    def log_tail(self, worker_id: str, chars: int = 2000) -> str:
        """The end of a worker's log file (why it died, when it could not start)."""
        try:
            with open(os.path.join(self._log_dir, f"worker-{worker_id}.log"), "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def cancel_file(self, worker_id: str) -> str:
        """Where the raylet names the task a worker should cancel on its next SIGINT."""
        return os.path.join(self._log_dir, f"worker-{worker_id}.cancel")

    def remove(self, worker_id: str) -> WorkerHandle | None:
        handle = self.workers.pop(worker_id, None)
        if handle is not None:
            try:
                os.unlink(self.cancel_file(worker_id))
            except FileNotFoundError:
                pass
            handle.conn.close()
            if handle.proc.poll() is None:
                handle.proc.kill()
            handle.proc.wait()
        return handle

    def stop_all(self, timeout: float = 2.0) -> None:
        for handle in self.workers.values():
            try:
                handle.conn.send(protocol.encode(protocol.Exit()))
            except OSError:
                pass
        procs.stop([h.proc for h in self.workers.values()], timeout=timeout)
        for handle in self.workers.values():
            handle.conn.close()
        self.workers.clear()
        if self.zygote is not None:
            self.zygote.stop()
