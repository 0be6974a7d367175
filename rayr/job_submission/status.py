"""What the job client and the job supervisor (which runs submitted drivers on the head)
share: a submitted job's states and the clock its times use."""

from __future__ import annotations

import time
from enum import StrEnum


class JobStatus(StrEnum):
    """States of a submitted job, Ray's names."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)

    def __str__(self) -> str:
        return self.value


def now_ms() -> int:
    return int(time.time() * 1000)
