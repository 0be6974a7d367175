"""Object-table records and inbox messages: the bytes stored under ``obj:<id>`` in Redis.

A record is one kind byte and a payload:

- ``V`` + frame: the value itself, inline (small objects).
- ``E`` + frame: the object is an error (a pickled exception ``get`` raises).
- ``S`` + node hex + ``:`` + size: the value sits in that node's object store.

A process's inbox (``inbox:<worker>``, a list) carries messages of one kind byte each:

- ``O`` + 20-byte object id + record: an object it owns or waits for is stored (built by
  concatenation in the STORE_OBJECTS script, so fixed byte by byte);
- ``F`` + object id: the last holder of an object it owns is gone (RELEASE_HOLDERS);
- ``C`` + object id: a task's result that it owns contains refs (free it with FREE_OBJECTS);
- ``R`` + object id + stale holder node + ``|`` + borrower inbox: a borrower found the
  object lost; please rebuild it;
- ``A`` + object id: the owner heard a rebuild request; wait for the object;
- ``STOP``: wakes and ends the inbox reader (sent by its own process).
"""

from __future__ import annotations

VALUE = 0x56  # b"V"
ERROR = 0x45  # b"E"
STORED = 0x53  # b"S"

MSG_OBJECT = 0x4F  # b"O"
MSG_FREED = b"F"
MSG_CONTAINER = b"C"
MSG_REBUILD = b"R"
MSG_REBUILD_ACK = b"A"
MSG_STOP = b"STOP"
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


def container_message(object_id: bytes) -> bytes:
    return MSG_CONTAINER + object_id


def rebuild_request(object_id: bytes, holder: str, borrower: str) -> bytes:
    return MSG_REBUILD + object_id + holder.encode() + b"|" + borrower.encode()


def parse_rebuild_request(msg: bytes) -> tuple[bytes, str, str]:
    """(object id, stale holder node, borrower inbox) of an ``R`` message."""
    holder, _, borrower = msg[1 + OID_LEN :].decode().partition("|")
    return msg[1 : 1 + OID_LEN], holder, borrower


def rebuild_ack(object_id: bytes) -> bytes:
    return MSG_REBUILD_ACK + object_id


def owner_message(msg: bytes) -> tuple[bytes, bytes]:
    """(kind byte, object id) of an ``F``, ``C``, ``R`` or ``A`` message."""
    return msg[:1], msg[1 : 1 + OID_LEN]
