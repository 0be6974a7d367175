"""Object-table records and inbox messages: the bytes stored under ``obj:<id>`` in Redis.

A record is one kind byte and a payload:

- ``V`` + frame: the value itself, inline (small objects).
- ``E`` + frame: the object is an error (a pickled exception ``get`` raises).
- ``S`` + node hex + ``:`` + size: the value sits in that node's object store.

An inbox message announcing a stored object is ``O`` + 20-byte object id + record; the
Lua store script builds it by concatenation, so this format is fixed byte by byte.
"""

from __future__ import annotations

VALUE = 0x56  # b"V"
ERROR = 0x45  # b"E"
STORED = 0x53  # b"S"

MSG_OBJECT = 0x4F  # b"O"
MSG_STOP = b"STOP"  # wakes and ends an inbox reader (sent by its own process)
OID_LEN = 20


def value_record(frame: bytes) -> bytes:
    return b"V" + frame


def error_record(frame: bytes) -> bytes:
    return b"E" + frame


def stored_record(node_hex: str, size: int) -> bytes:
    return f"S{node_hex}:{size}".encode()


def parse_stored(record: bytes) -> tuple[str, int]:
    """(node hex, size) of an ``S`` record."""
    node_hex, _, size = record[1:].decode().partition(":")
    return node_hex, int(size)


def object_message(object_id: bytes, record: bytes) -> bytes:
    return b"O" + object_id + record


def parse_message(msg: bytes) -> tuple[bytes, bytes] | None:
    """(object id, record) for an object message, None for anything else."""
    if msg and msg[0] == MSG_OBJECT:
        return msg[1 : 1 + OID_LEN], msg[1 + OID_LEN :]
    return None
