"""Binary identifiers: jobs, tasks, objects, nodes and workers.

An ObjectID is the id of the task that creates it (16 bytes) followed by a 4-byte
big-endian return index, so the creating task of any object is known from its id
(lineage) and all of a job's ids share the job's 4-byte prefix.
"""

from __future__ import annotations

import os

JOB_ID_SIZE = 4
TASK_ID_SIZE = 16
OBJECT_ID_SIZE = 20
NODE_ID_SIZE = 16
WORKER_ID_SIZE = 12


class BaseID:
    """An immutable byte string id with a hex form."""

    __slots__ = ("_bytes", "_hash", "_hex")
    SIZE = 0

    def __init__(self, data: bytes) -> None:
        if len(data) != self.SIZE:
            raise ValueError(
                f"{type(self).__name__} needs {self.SIZE} bytes, got {len(data)}"
            )
        self._bytes = data
        self._hash = hash(data)
        self._hex = ""  # made on first use, then shared (every spec names its job by it)

    @classmethod
    def from_random(cls) -> BaseID:
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def from_hex(cls, text: str) -> BaseID:
        return cls(bytes.fromhex(text))

    def binary(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        if not self._hex:
            self._hex = self._bytes.hex()
        return self._hex

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BaseID) and type(other) is type(self) and other._bytes == self._bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return (type(self), (self._bytes,))


class PlacementGroupID(str):
    """A placement group's id: the hex string the tables key it by (so it compares equal to
    one), with Ray's ``hex()`` and ``binary()``."""

    __slots__ = ()

    def hex(self) -> str:
        return str(self)

    def binary(self) -> bytes:
        return bytes.fromhex(self)


class JobID(BaseID):
    SIZE = JOB_ID_SIZE

    @classmethod
    def from_int(cls, value: int) -> JobID:
        return cls(value.to_bytes(JOB_ID_SIZE, "big"))

    def int(self) -> int:
        return int.from_bytes(self._bytes, "big")


class NodeID(BaseID):
    SIZE = NODE_ID_SIZE


class WorkerID(BaseID):
    SIZE = WORKER_ID_SIZE


class TaskID(BaseID):
    SIZE = TASK_ID_SIZE

    @classmethod
    def for_job(cls, job_id: JobID) -> TaskID:
        """A fresh random task id inside ``job_id``'s id space."""
        return cls(job_id.binary() + os.urandom(TASK_ID_SIZE - JOB_ID_SIZE))

    def job_id(self) -> JobID:
        return JobID(self._bytes[:JOB_ID_SIZE])


class ObjectID(BaseID):
    SIZE = OBJECT_ID_SIZE

    @classmethod
    def for_return(cls, task_id: TaskID, index: int) -> ObjectID:
        """The id of return value ``index`` (1-based; 0 marks a put) of ``task_id``."""
        return cls(task_id.binary() + index.to_bytes(4, "big"))

    def task_id(self) -> TaskID:
        return TaskID(self._bytes[:TASK_ID_SIZE])

    def index(self) -> int:
        return int.from_bytes(self._bytes[TASK_ID_SIZE:], "big")
