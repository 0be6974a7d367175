"""Submitting jobs to a cluster from anywhere that reaches its Redis, as Ray's job API does.

A job is a driver (the *entrypoint*, a shell command) run on the head node by the job
supervisor, inside its runtime env, with ``RAYR_ADDRESS`` pointing at the cluster::

    from rayr.job_submission import JobSubmissionClient
    client = JobSubmissionClient("127.0.0.1:6379")
    sid = client.submit_job(entrypoint="python main.py", runtime_env={"working_dir": "./app"})
    client.get_job_status(sid); print(client.get_job_logs(sid))

The job's record, state and output live in Redis, so they can be read after it ends.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from rayr.config import load_settings
from rayr.gcs.client import GcsClient, connect
from rayr.job_submission.status import JobStatus, now_ms
from rayr.keys import Keys
from rayr.runtime_env import packaging
from rayr.runtime_env.validation import validate as validate_runtime_env


@dataclass
class JobDetails:
    """What the job table holds about one submitted job. Times are in ms since the epoch."""

    submission_id: str
    entrypoint: str
    status: JobStatus
    message: str = ""
    job_id: str | None = None  # the driver's job id, once it connected
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    driver_exit_code: int | None = None
    driver_pid: int | None = None
    type: str = "SUBMISSION"

    @classmethod
    def from_record(cls, raw: dict[bytes, bytes]) -> JobDetails:
        rec = {k.decode(): v.decode() for k, v in raw.items()}

        def number(name: str) -> int | None:
            return int(rec[name]) if rec.get(name, "") != "" else None

        return cls(
            submission_id=rec["submission_id"],
            entrypoint=rec.get("entrypoint", ""),
            status=JobStatus(rec.get("status", "PENDING")),
            message=rec.get("message", ""),
            job_id=rec.get("job_id") or None,
            start_time=number("start_time"),
            end_time=number("end_time"),
            metadata=json.loads(rec.get("metadata") or "{}"),
            runtime_env=json.loads(rec.get("runtime_env") or "{}"),
            driver_exit_code=number("driver_exit_code"),
            driver_pid=number("driver_pid"),
        )


def new_submission_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "rayrsubmit_" + "".join(secrets.choice(alphabet) for _ in range(16))


class JobSubmissionClient:
    """Submit, watch and stop jobs on the cluster whose Redis is at ``address``.

    ``address`` is ``HOST:PORT`` (or ``redis://...``); without one, ``RAYR_ADDRESS``, then
    the cluster ``rayr start`` recorded on this host.

    Raises:
        ConnectionError: no cluster there, or it refused the password.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        redis_password: str | None = None,
        cluster_name: str | None = None,
        temp_dir: str | None = None,
    ) -> None:
        settings = load_settings(
            {"redis_password": redis_password, "cluster_name": cluster_name, "temp_dir": temp_dir}
        )
        from rayr.gcs.cluster import check, resolve_default

        self.address, password = resolve_default(settings, address)
        self._settings = settings
        client = connect(self.address, password, cluster_name=settings.cluster_name, socket_connect_timeout=3)
        self._gcs = GcsClient(client, Keys(settings.cluster_name))
        self._r: Any = self._gcs.r
        self._keys = self._gcs.keys
        try:
            check(client, self.address, password)
        except ConnectionError:
            client.close()
            raise

    def close(self) -> None:
        self._r.close()

    # ------------------------------------------------------------------ submit
    def submit_job(
        self,
        *,
        entrypoint: str,
        submission_id: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Queue ``entrypoint`` (a shell command) to run on the head as a driver; returns the
        submission id. ``working_dir`` and ``py_modules`` are uploaded from this host now.

        Raises:
            ValueError: an empty entrypoint, a bad runtime_env, or a submission id in use.
            RuntimeError: the cluster has no job supervisor running.
        """
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError(f"entrypoint must be a non-empty shell command, got {entrypoint!r}")
        submission_id = submission_id or job_id or new_submission_id()
        env = validate_runtime_env(runtime_env)
        if metadata is not None and not (
            isinstance(metadata, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise ValueError(f"metadata must be a dict of str -> str, got {metadata!r}")
        if not self._r.exists(self._keys.supervisor_alive):
            raise RuntimeError(
                f"The cluster at {self.address} has no job supervisor running: start the head with "
                "`rayr start --head` (an embedded cluster from rayr.init() runs no jobs)."
            )
        resolved = packaging.resolve(env, self._r, self._keys, self._settings.runtime_env_max_package_bytes)
        key = self._keys.submission(submission_id)
        if not self._r.hsetnx(key, "submission_id", submission_id):
            raise ValueError(f"A job with submission id {submission_id!r} already exists; pick another id.")
        with self._r.pipeline() as pipe:
            pipe.hset(key, mapping={
                "entrypoint": entrypoint,
                "status": JobStatus.PENDING.value,
                "message": "Job is waiting for the job supervisor to start it.",
                "runtime_env": json.dumps(resolved),
                "metadata": json.dumps(metadata or {}),
                "start_time": now_ms(),
            })
            pipe.zadd(self._keys.submissions, {submission_id: time.time()})
            pipe.rpush(self._keys.submission_queue, f"run:{submission_id}")
            pipe.execute()
        return submission_id

    # ------------------------------------------------------------------ query
    def get_job_info(self, submission_id: str) -> JobDetails:
        """The job's record.

        Raises:
            ValueError: no job has that submission id.
        """
        raw = self._r.hgetall(self._keys.submission(submission_id))
        if not raw:
            raise ValueError(f"No job with submission id {submission_id!r}; `rayr job list` shows the jobs.")
        return JobDetails.from_record(raw)

    def get_job_status(self, submission_id: str) -> JobStatus:
        return self.get_job_info(submission_id).status

    def list_jobs(self) -> list[JobDetails]:
        """Every submitted job, oldest first."""
        out = []
        for raw_id in self._r.zrange(self._keys.submissions, 0, -1):
            raw = self._r.hgetall(self._keys.submission(raw_id.decode()))
            if raw:
                out.append(JobDetails.from_record(raw))
        return out

    def get_job_logs(self, submission_id: str) -> str:
        """Everything the driver printed (stdout and stderr), as kept (the newest ~10,000 chunks)."""
        self.get_job_info(submission_id)
        entries = self._r.xrange(self._keys.submission_logs(submission_id))
        return "".join(fields[b"d"].decode(errors="replace") for _, fields in entries)

    def follow_job_logs(self, submission_id: str, poll_s: float = 0.5) -> Iterator[str]:
        """The driver's output as it comes, from the start, until the job has ended."""
        self.get_job_info(submission_id)
        stream = self._keys.submission_logs(submission_id)
        last = "0"
        while True:
            ended = self.get_job_status(submission_id).is_terminal()
            reply = self._r.xread({stream: last}, count=500, block=None if ended else int(poll_s * 1000))
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                last = entry_id
                yield fields[b"d"].decode(errors="replace")
            if ended and not entries:  # the supervisor writes all output before the final state
                return

    async def tail_job_logs(self, submission_id: str) -> AsyncIterator[str]:
        """Ray's async form of :meth:`follow_job_logs`: ``async for chunk in client.tail_job_logs(id)``."""
        it = self.follow_job_logs(submission_id)
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, it, done)
            if chunk is done:
                return
            yield str(chunk)

    # ------------------------------------------------------------------- stop
    def stop_job(self, submission_id: str) -> bool:
        """Ask the supervisor to stop the job (SIGTERM, then SIGKILL); False if it had already ended."""
        if self.get_job_status(submission_id).is_terminal():
            return False
        with self._r.pipeline() as pipe:
            pipe.hset(self._keys.submission(submission_id), "stop_requested", "1")
            pipe.rpush(self._keys.submission_queue, f"stop:{submission_id}")
            pipe.execute()
        return True

    def delete_job(self, submission_id: str) -> bool:
        """Forget an ended job: its record and its logs. False if it has not ended."""
        if not self.get_job_status(submission_id).is_terminal():
            return False
        with self._r.pipeline() as pipe:
            pipe.delete(self._keys.submission(submission_id), self._keys.submission_logs(submission_id))
            pipe.zrem(self._keys.submissions, submission_id)
            pipe.execute()
        return True

    def wait_until_finish(self, submission_id: str, timeout_s: float | None = None) -> JobStatus:
        """Block until the job ends (or the timeout passes); its status then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.get_job_status(submission_id)
            if status.is_terminal() or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(0.1)


def job_rows(gcs: GcsClient) -> list[dict[str, Any]]:
    """Drivers in the job table and submitted jobs, one row each (``rayr list jobs``)."""
    keys = gcs.keys
    rows: dict[str, dict[str, Any]] = {}
    for raw in gcs.r.smembers(keys.jobs):
        info = gcs.get_job(raw.decode())
        if info:
            rows["job:" + info["job_id"]] = {
                "job_id": info["job_id"], "submission_id": info.get("submission_id") or None,
                "status": info.get("status", ""), "entrypoint": info.get("entrypoint", ""),
                "start_time": float(info.get("start_time") or 0),
            }
    for raw_id in gcs.r.zrange(keys.submissions, 0, -1):
        raw = gcs.r.hgetall(keys.submission(raw_id.decode()))
        if not raw:
            continue
        job = JobDetails.from_record(raw)
        row = {"job_id": job.job_id, "submission_id": job.submission_id, "status": job.status.value,
               "entrypoint": job.entrypoint, "start_time": (job.start_time or 0) / 1000}
        rows.pop(f"job:{job.job_id}", None)  # a submitted job shows once, with its own status
        rows["sub:" + job.submission_id] = row
    return sorted(rows.values(), key=lambda r: r["start_time"])


__all__ = ["JobDetails", "JobStatus", "JobSubmissionClient", "job_rows"]
