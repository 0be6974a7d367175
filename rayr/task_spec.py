"""Task specifications and their stream encoding.

A spec is a plain tuple of bytes/str/int/dict values pickled with the standard pickle, so
a raylet can decode it (to retry or fail a task) without unpickling user data: user
arguments stay an opaque serialized frame inside it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, NamedTuple

# every actor answers it, as in Ray: True once the actor is up (``handle.__ray_ready__.remote()``)
READY_METHOD = "__ray_ready__"

ARGS_OBJECT_INDEX = 0xFFFFFFFF  # return index of the stored object holding large arguments

TASK = 0
ACTOR_CREATION = 1
ACTOR_CALL = 2

STREAMING = -1  # num_returns of a generator task: items arrive one by one
STREAM_FIRST_ITEM = 2  # return index of a stream's first item; index 1 reports the item count
# num_returns="dynamic" (Ray's older generators): items are stored as a stream's, then return 1
# holds a DynamicObjectRefGenerator of refs to them, once the generator is exhausted
DYNAMIC = -2


class ArgRef:
    """Stands in, inside the pickled arguments, for a top-level ObjectRef argument.

    The executor swaps it for the referenced value before calling the function.
    """

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArgRef, (self.slot,))


# A task-stream entry holds the encoded spec; an actor creation also carries CREATION_FIELD
# (the raylet spots creations without decoding every spec), and a creation queued again because
# its node died carries RESTART_FIELD (the new incarnation replays the mailbox). An actor
# mailbox entry holds the spec alone (XADD NOMKSTREAM: GcsClient.submit_actor_call_command).
SPEC_FIELD = b"s"
CREATION_FIELD = b"a"
RESTART_FIELD = b"r"


def entry_fields(spec: bytes, *, creation: bool = False, restart: bool = False) -> dict[bytes, bytes]:
    """The fields of the task-stream entry that queues the encoded ``spec``."""
    fields = {SPEC_FIELD: spec}
    if creation:
        fields[CREATION_FIELD] = b"1"
    if restart:
        fields[RESTART_FIELD] = b"1"
    return fields


@dataclass(frozen=True)
class TaskOptions:
    """Options of a remote function call, validated once when ``.options()`` is built."""

    resources: dict[str, float]
    shape: str
    num_returns: int
    max_retries: int
    retry_exceptions: bool | bytes
    name: str
    strategy: Any = "DEFAULT"  # "DEFAULT", "SPREAD" or a NodeAffinitySchedulingStrategy
    runtime_env: dict[str, Any] | None = None  # validated; merged over the inherited env


FIRST_RETURN = (1).to_bytes(4, "big")  # suffix of a task's first return id


class TaskSpec(NamedTuple):
    """Everything an executor needs to run one task and deliver its results."""

    task_id: bytes
    job_hex: str
    function_key: str
    function_name: str
    args: bytes  # frame of (args, kwargs) with ArgRef placeholders; b"" when args_object is set
    args_object: bytes | None  # id of a stored frame holding large arguments
    ref_args: tuple[bytes, ...]  # object id per ArgRef slot
    dep_records: dict[bytes, bytes]  # object id -> record, for small deps inlined by the owner
    num_returns: int
    resources: dict[str, float]
    max_retries: int  # -1: retry forever on worker crashes
    retry_exceptions: bool | bytes  # bytes: pickled list of exception classes
    owner: str  # inbox (worker id hex) of the process that owns the results
    attempt: int
    name: str
    kind: int = 0  # TASK, ACTOR_CREATION or ACTOR_CALL
    actor_id: str = ""  # hex; the actor created (ACTOR_CREATION) or called (ACTOR_CALL)
    method: str = ""  # ACTOR_CALL: the method's name
    # ACTOR_CREATION: resources held while alive, restart and concurrency settings
    actor_options: dict[str, Any] | None = None
    placement_group: str = ""  # hex of the group it runs in
    capture_children: bool = False  # the tasks it starts run in that group too
    concurrency_group: str = ""  # ACTOR_CALL: the group named at the call (.options), if any

    def return_ids(self) -> list[bytes]:
        # num_returns=0 still reports completion through one id; a stream reports its count there
        n = self.num_returns
        if n <= 1:  # nearly every call: one id, spelled without a loop
            return [self.task_id + FIRST_RETURN]
        return [self.task_id + i.to_bytes(4, "big") for i in range(1, n + 1)]

    def encode(self) -> bytes:
        return pickle.dumps(tuple(self), protocol=5)

    @classmethod
    def decode(cls, data: bytes) -> TaskSpec:
        fields = pickle.loads(data)
        if len(fields) == _SPEC_FIELDS:  # every spec this version wrote: no keyword binding
            return tuple.__new__(cls, fields)
        return cls(*fields)  # an older spec without the newest fields: their defaults


_SPEC_FIELDS = len(TaskSpec._fields)
