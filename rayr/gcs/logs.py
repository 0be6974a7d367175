"""Reading a node's log files from anywhere that reaches Redis: the asker puts a request on the
node's control stream (``control.ListLogs`` / ``control.ReadLog``) and waits on a reply list;
the node's raylet answers from its session's ``logs/`` directory. Both halves live here.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from typing import Any

from rayr.gcs import control
from rayr.gcs.client import GcsClient

MAX_READ = 1 << 20  # bytes per answer
REPLY_TTL_S = 60  # an answer nobody took goes after this long
ANSWER_WAIT_S = 10.0


class LogError(Exception):
    """A log could not be listed or read; the message says why."""


# ------------------------------------------------------------ the raylet's half
def answer(gcs: GcsClient, log_dir: str, request: control.ListLogs | control.ReadLog,
           worker_pids: Mapping[str, int]) -> None:
    """Answer a log request from this node's ``log_dir``."""
    if isinstance(request, control.ListLogs):
        reply = json.dumps(_listing(log_dir, worker_pids)).encode()
    else:
        reply = _read(log_dir, request)
    with gcs.r.pipeline(transaction=False) as p:
        p.rpush(request.reply, reply)
        p.expire(request.reply, REPLY_TTL_S)
        p.execute()


def _listing(log_dir: str, worker_pids: Mapping[str, int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(log_dir))
    except OSError:
        return out
    for name in names:
        try:
            st = os.stat(os.path.join(log_dir, name))
        except OSError:
            continue
        entry: dict[str, Any] = {"name": name, "size": st.st_size, "mtime": st.st_mtime}
        if name.startswith("worker-") and name.endswith(".log"):
            pid = worker_pids.get(name[len("worker-"):-len(".log")])
            if pid is not None:
                entry["pid"] = pid
        out.append(entry)
    return out


def _read(log_dir: str, request: control.ReadLog) -> bytes:
    name = request.name
    if not name or "/" in name or name.startswith("."):
        return b"err:" + f"{name!r} is not a log file name (list them with `rayr logs`)".encode()
    path = os.path.join(log_dir, name)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size + request.offset) if request.offset < 0 else min(request.offset, size)
            f.seek(start)
            data = f.read(max(0, min(request.limit, MAX_READ)))
    except FileNotFoundError:
        return b"err:" + f"no log file {name!r} on this node".encode()
    except OSError as err:
        return b"err:" + f"cannot read {name!r}: {err}".encode()
    return b"ok:" + str(start + len(data)).encode() + b"\n" + data


# ------------------------------------------------------------- the asker's half
def _ask(gcs: GcsClient, node_id: str, make: Any) -> bytes:
    reply = gcs.keys.log_reply(secrets.token_hex(8))
    gcs.r.xadd(gcs.keys.node_stream(node_id), make(reply).fields())
    got = gcs.r.blpop([reply], timeout=ANSWER_WAIT_S)
    if got is None:
        raise LogError(f"node {node_id[:12]} did not answer within {ANSWER_WAIT_S:g}s (is it alive?)")
    return bytes(got[1])


def list_logs(gcs: GcsClient, node_id: str) -> list[dict[str, Any]]:
    """The log files of node ``node_id``: name, size, mtime (and pid, for a worker's)."""
    return list(json.loads(_ask(gcs, node_id, control.ListLogs)))


def read_log(gcs: GcsClient, node_id: str, name: str, offset: int = 0,
             limit: int = MAX_READ) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of log ``name`` on node ``node_id`` from ``offset`` (negative:
    from the end); returns (data, the offset after it)."""
    answer_ = _ask(gcs, node_id, lambda reply: control.ReadLog(name, offset, limit, reply))
    if answer_.startswith(b"err:"):
        raise LogError(answer_[4:].decode(errors="replace"))
    head, _, data = answer_[3:].partition(b"\n")
    return data, int(head)
