"""The job supervisor: one process on the head node that runs submitted jobs' drivers.

It serves the submission queue (``run:<id>``, ``stop:<id>``): sets the job's runtime env up
on the head (in a thread: pip may take a while), starts the entrypoint in its own process
group with ``RAYR_ADDRESS`` set, copies its output to a capped Redis stream (and a file),
and records each state change. A stop sends SIGTERM to the group, then SIGKILL. Entrypoints
die with the supervisor (SIGKILL through PDEATHSIG), and a stopped supervisor stops them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis

from rayr import procs
from rayr.config import Settings, daemon_settings
from rayr.gcs.client import REDIS_DOWN_ERRORS, GcsClient, connect_as
from rayr.job_submission.status import JobStatus, now_ms
from rayr.keys import Keys
from rayr.private_files import open_log, private_dir
from rayr.runtime_env import installer
from rayr.runtime_env.validation import setup_timeout

STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long
LOG_MAX_ENTRIES = 10_000  # chunks of driver output kept per job (approximately)
CHUNK = 8192
TAIL_LINES = 20  # output lines quoted in a failed job's message
SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%!{}\n")

log = logging.getLogger("rayr.job_supervisor")


@dataclass
class RunningJob:
    submission_id: str
    proc: subprocess.Popen
    pump: threading.Thread
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    stop_at: float | None = None  # when to SIGKILL the group after a stop's SIGTERM


def entrypoint_command(entrypoint: str) -> list[str]:
    """Run a plain command directly (it then gets our death signal); anything using shell
    syntax through ``/bin/sh -c``."""
    if not SHELL_CHARS & set(entrypoint):
        try:
            argv = shlex.split(entrypoint)
        except ValueError:
            argv = []
        if argv:
            return argv
    return ["/bin/sh", "-c", entrypoint]


class JobSupervisor:
    """Runs submitted jobs; all of their state is in Redis."""

    def __init__(self, gcs: GcsClient, settings: Settings, redis_url: str, session_dir: str) -> None:
        self.gcs = gcs
        self.r: Any = gcs.r
        self.keys = gcs.keys
        self.settings = settings
        self.redis_url = redis_url
        self.session_dir = session_dir
        self.log_dir = os.path.join(session_dir, "logs")
        private_dir(self.log_dir)
        self.running: dict[str, RunningJob] = {}
        self.setting_up: set[str] = set()
        self._ready: queue.SimpleQueue[tuple[str, installer.WorkerEnv | None, str]] = queue.SimpleQueue()
        self._setups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rayr-job-env")
        self._signalled = False
        self._alive_due = 0.0

    def on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True  # a flag only: acted on by the main loop

    # ------------------------------------------------------------------ state
    def _update(self, sid: str, **fields: Any) -> None:
        self.r.hset(self.keys.submission(sid), mapping={k: "" if v is None else v for k, v in fields.items()})

    def _record(self, sid: str) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.submission(sid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    # ------------------------------------------------------------------- loop
    def run(self) -> None:
        self._adopt_leftovers()
        down_since: float | None = None
        try:
            while not self._signalled:
                try:
                    if down_since is not None:
                        self._requeue_pending()  # a request popped as Redis went away is lost
                        log.warning("Redis answers again after %.1f s", time.monotonic() - down_since)
                        down_since = None
                    self._serve_once()
                except REDIS_DOWN_ERRORS as err:
                    # running jobs go on (their drivers wait out the outage too); what could
                    # not be recorded is recorded once Redis is back
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("Redis is unreachable (%s); the running jobs go on", err)
                    time.sleep(0.5)
        finally:
            self._stop_all()

    def _serve_once(self) -> None:
        self._keep_alive()
        item = self.r.blpop([self.keys.submission_queue], timeout=0.2)
        if item is not None:
            verb, _, sid = item[1].decode().partition(":")
            if verb == "run":
                self._start_setup(sid)
            elif verb == "stop":
                self._stop(sid)
        self._start_ready()
        self._reap()

    def _requeue_pending(self) -> None:
        """Queue again every pending submission this supervisor has not taken up: one a
        previous supervisor left, or whose request was popped with a reply an outage lost. A
        duplicate request is ignored (``_start_setup`` takes only pending ones it is not
        already setting up)."""
        queued = {x.decode() for x in self.r.lrange(self.keys.submission_queue, 0, -1)}
        for raw in self.r.zrange(self.keys.submissions, 0, -1):
            sid = raw.decode()
            if sid in self.setting_up or sid in self.running or f"run:{sid}" in queued:
                continue
            if self.r.hget(self.keys.submission(sid), "status") == JobStatus.PENDING.value.encode():
                self.r.rpush(self.keys.submission_queue, f"run:{sid}")

    def _keep_alive(self) -> None:
        if time.monotonic() >= self._alive_due:
            self._alive_due = time.monotonic() + 1.0
            ttl_ms = int(max(3.0, self.settings.node_timeout_s) * 1000)
            self.r.set(self.keys.supervisor_alive, os.getpid(), px=ttl_ms)

    def _adopt_leftovers(self) -> None:
        """Jobs a previous supervisor left: running ones are lost, pending ones queued again."""
        for raw in self.r.zrange(self.keys.submissions, 0, -1):
            sid = raw.decode()
            rec = self._record(sid)
            if rec.get("status") == JobStatus.RUNNING.value:
                pid = int(rec.get("driver_pid") or 0)
                if pid and psutil.pid_exists(pid):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self._update(sid, status=JobStatus.FAILED.value, end_time=now_ms(),
                             message="The job supervisor restarted while the job ran; its driver was lost.")
        self._requeue_pending()

    # ------------------------------------------------------------------ start
    def _start_setup(self, sid: str) -> None:
        if sid in self.setting_up or sid in self.running:
            return  # asked twice (queued again after an outage)
        rec = self._record(sid)
        if rec.get("status") != JobStatus.PENDING.value:
            return
        if rec.get("stop_requested"):
            self._update(sid, status=JobStatus.STOPPED.value, end_time=now_ms(),
                         message="Stopped before it started.")
            return
        resolved = json.loads(rec.get("runtime_env") or "{}")
        self.setting_up.add(sid)
        if resolved.keys() & {"working_dir", "py_modules", "pip"}:
            self._update(sid, message="Setting up the job's runtime env.")
        self._setups.submit(self._setup, sid, resolved)

    def _setup(self, sid: str, resolved: dict[str, Any]) -> None:
        try:
            env = installer.prepare(
                resolved,
                fetch=lambda digest: self.r.get(self.keys.package(digest)),
                session_dir=self.session_dir,
                temp_dir=self.settings.temp_dir,
                timeout=setup_timeout(resolved),
            )
            self._ready.put((sid, env, ""))
        except Exception as err:  # reported as the job's failure
            self._ready.put((sid, None, str(err)))

    def _start_ready(self) -> None:
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return
            try:
                self._start_one(*item)
            except REDIS_DOWN_ERRORS:
                self._ready.put(item)  # started (or failed) once Redis answers
                raise
            self.setting_up.discard(item[0])

    def _start_one(self, sid: str, env: installer.WorkerEnv | None, error: str) -> None:
        if sid in self.running:  # started, but Redis went away as it was recorded
            self._update(sid, status=JobStatus.RUNNING.value, driver_pid=self.running[sid].proc.pid,
                         message="Job is running.", run_time=now_ms())
            return
        rec = self._record(sid)
        if rec.get("status") != JobStatus.PENDING.value:
            return  # stopped meanwhile
        if env is None:
            self._update(sid, status=JobStatus.FAILED.value, end_time=now_ms(),
                         message=f"The job's runtime env could not be set up: {error}")
            return
        try:
            self._spawn(sid, rec, env)
        except OSError as err:
            self._update(sid, status=JobStatus.FAILED.value, end_time=now_ms(),
                         message=f"Could not start the entrypoint {rec.get('entrypoint')!r}: {err}")

    def _spawn(self, sid: str, rec: dict[str, str], env: installer.WorkerEnv) -> None:
        environ = env.environ()
        if "VIRTUAL_ENV" not in env.env:  # `python` in the entrypoint is the one rayr runs on
            environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")
        environ.update(
            RAYR_ADDRESS=self.redis_url,
            RAYR_CLUSTER_NAME=self.settings.cluster_name,
            RAYR_TEMP_DIR=self.settings.temp_dir,
            RAYR_JOB_SUBMISSION_ID=sid,
            RAYR_JOB_RUNTIME_ENV=rec.get("runtime_env") or "{}",
            PYTHONUNBUFFERED="1",  # output reaches the log as it is printed
        )
        if self.settings.redis_password:
            environ["RAYR_REDIS_PASSWORD"] = self.settings.redis_password
        # spawned from this (the main) thread: PDEATHSIG fires when the spawning thread ends
        proc = procs.spawn(entrypoint_command(rec["entrypoint"]), log=subprocess.PIPE,
                           death_signal=signal.SIGKILL, env=environ, new_session=True, cwd=env.cwd)
        job = RunningJob(sid, proc, threading.Thread())
        job.pump = threading.Thread(target=self._pump, args=(job,), name=f"rayr-job-{sid}", daemon=True)
        job.pump.start()
        self.running[sid] = job
        self._update(sid, status=JobStatus.RUNNING.value, driver_pid=proc.pid,
                     message="Job is running.", run_time=now_ms())
        log.info("job %s started: pid %d: %s", sid, proc.pid, rec["entrypoint"])

    def _pump(self, job: RunningJob) -> None:
        """Copy the driver's output to its log file and the job's log stream."""
        assert job.proc.stdout is not None
        fd = job.proc.stdout.fileno()
        stream = self.keys.submission_logs(job.submission_id)
        partial = ""
        with open_log(os.path.join(self.log_dir, f"job-driver-{job.submission_id}.log")) as f:
            while True:
                try:
                    data = os.read(fd, CHUNK)
                except OSError:
                    break
                if not data:
                    break
                f.write(data)
                f.flush()
                text = data.decode(errors="replace")
                lines = (partial + text).split("\n")
                partial = lines.pop()
                job.tail.extend(lines)
                try:
                    self.r.xadd(stream, {b"d": data}, maxlen=LOG_MAX_ENTRIES, approximate=True)
                except redis.RedisError:
                    pass  # the file keeps everything
        if partial:
            job.tail.append(partial)

    # ------------------------------------------------------------------- stop
    def _stop(self, sid: str) -> None:
        job = self.running.get(sid)
        if job is not None:
            if job.stop_at is None:
                self._signal(job, signal.SIGTERM)
                job.stop_at = time.monotonic() + STOP_GRACE_S
            return
        rec = self._record(sid)
        if rec.get("status") == JobStatus.PENDING.value:  # not started yet (setting up, say)
            self._update(sid, status=JobStatus.STOPPED.value, end_time=now_ms(),
                         message="Stopped before it started.")

    def _signal(self, job: RunningJob, sig: int) -> None:
        try:
            os.killpg(job.proc.pid, sig)  # the whole group: a shell's children too
        except OSError:
            pass

    def _reap(self) -> None:
        for sid, job in list(self.running.items()):
            code = job.proc.poll()
            if code is None:
                if job.stop_at is not None and time.monotonic() > job.stop_at:
                    self._signal(job, signal.SIGKILL)
                continue
            self._signal(job, signal.SIGKILL)  # what the driver left in its group goes with it
            job.pump.join(timeout=5)  # all output is in the stream before the final state
            self._finish(job, code)  # Redis away: the job stays here and ends on a later pass
            del self.running[sid]

    def _finish(self, job: RunningJob, code: int, why: str = "") -> None:
        sid = job.submission_id
        tail = "\n".join(job.tail)
        if job.stop_at is not None or why:
            status, message = JobStatus.STOPPED, why or "Job was stopped."
        elif code == 0:
            status, message = JobStatus.SUCCEEDED, "Job finished successfully."
        else:
            how = f"exit code {code}" if code > 0 else f"signal {-code}"
            status = JobStatus.FAILED
            message = f"The entrypoint ended with {how}. Its last output lines:\n{tail}"
        self._update(sid, status=status.value, end_time=now_ms(), driver_exit_code=code, message=message)
        log.info("job %s ended: %s (code %s)", sid, status.value, code)

    def _stop_all(self) -> None:
        """Stop every running job (the cluster is stopping): SIGTERM, then SIGKILL."""
        for job in self.running.values():
            self._signal(job, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for job in self.running.values():
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
                job.proc.wait()
            job.pump.join(timeout=2)
            try:
                self._finish(job, job.proc.returncode, "The cluster was stopped while the job ran.")
            except redis.RedisError:
                pass
        self.running.clear()
        self._setups.shutdown(wait=False, cancel_futures=True)
        try:
            self.r.delete(self.keys.supervisor_alive)
        except redis.RedisError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rayr.job_submission.supervisor")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--settings-json", required=True)
    parser.add_argument("--session-dir", required=True)
    opts = parser.parse_args(argv)
    settings = daemon_settings(opts.settings_json)
    gcs = GcsClient(connect_as(opts.redis_url, settings), Keys(settings.cluster_name))
    supervisor = JobSupervisor(gcs, settings, opts.redis_url, opts.session_dir)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    supervisor.run()


if __name__ == "__main__":
    main()
