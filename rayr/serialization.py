"""The one module that knows rayr's object wire format.

A serialized object is a *frame*::

    u32 inband_len | u32 nbufs | u64 len * nbufs | inband pickle | pad | buffer | pad | buffer ...

The in-band part is a pickle (protocol 5; cloudpickle so functions and classes travel by
value). Out-of-band buffers (numpy arrays, PickleBuffers) are laid out after it, each
starting at a multiple of 64 bytes from the frame start, so a frame written to page-aligned
shared memory yields aligned, zero-copy, read-only numpy views on ``deserialize``.
"""

from __future__ import annotations

import pickle
import struct
import threading
from collections.abc import Sequence
from typing import Any

import cloudpickle

ALIGN = 64
_HEAD = struct.Struct("<II")
_LEN = struct.Struct("<Q")

_collector = threading.local()


def note_serialized_ref(ref: Any) -> None:
    """Called by ObjectRef.__reduce__: records refs captured inside the value being serialized."""
    refs = getattr(_collector, "refs", None)
    if refs is not None:
        refs.append(ref)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class SerializedObject:
    """A value ready to be written inline or into an object store."""

    __slots__ = ("inband", "buffers", "contained_refs", "_layout")

    def __init__(self, inband: bytes, buffers: list[memoryview], contained_refs: list[Any]):
        self.inband = inband
        self.buffers = buffers
        self.contained_refs = contained_refs
        self._layout: tuple[int, list[int]] | None = None

    def _offsets(self) -> tuple[int, list[int]]:
        if self._layout is None:
            pos = _HEAD.size + _LEN.size * len(self.buffers) + len(self.inband)
            offsets = []
            for buf in self.buffers:
                pos = _align(pos)
                offsets.append(pos)
                pos += buf.nbytes
            self._layout = (pos, offsets)
        return self._layout

    @property
    def total_size(self) -> int:
        """Bytes the frame occupies."""
        return self._offsets()[0]

    def write_to(self, out: memoryview) -> None:
        """Write the frame into ``out`` (at least ``total_size`` bytes)."""
        total, offsets = self._offsets()
        pos = _HEAD.size
        _HEAD.pack_into(out, 0, len(self.inband), len(self.buffers))
        for buf in self.buffers:
            _LEN.pack_into(out, pos, buf.nbytes)
            pos += _LEN.size
        out[pos : pos + len(self.inband)] = self.inband
        for buf, off in zip(self.buffers, offsets, strict=True):
            out[off : off + buf.nbytes] = buf.cast("B")

    def to_bytes(self) -> bytes:
        """The frame as one bytes object (for inline transport)."""
        if not self.buffers:
            return _HEAD.pack(len(self.inband), 0) + self.inband
        out = bytearray(self.total_size)
        self.write_to(memoryview(out))
        return bytes(out)


# values that hold no ObjectRef nor buffer: the plain pickler makes the same bytes ~6x faster
PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes})


def serialize_plain(value: Any) -> SerializedObject:
    """``serialize`` for a value the caller knows holds only plain values (PLAIN_TYPES) and
    objects the standard pickler takes by reference (no ref, buffer, function or class)."""
    return SerializedObject(pickle.dumps(value, protocol=5), [], [])


def serialize(value: Any) -> SerializedObject:
    """Pickle ``value`` with out-of-band buffers; records ObjectRefs found inside it."""
    if type(value) in PLAIN_TYPES:  # e.g. most tasks' results
        return serialize_plain(value)
    buffers: list[memoryview] = []
    outer = getattr(_collector, "refs", None)
    refs: list[Any] = []
    _collector.refs = refs
    try:
        inband = cloudpickle.dumps(
            value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw())
        )
    finally:
        _collector.refs = outer
    if outer is not None:
        outer.extend(refs)
    return SerializedObject(inband, buffers, refs)


def dumps(value: Any) -> bytes:
    """Serialize straight to an inline frame."""
    return serialize(value).to_bytes()


def deserialize(frame: bytes | memoryview) -> Any:
    """Rebuild a value from a frame; buffers are views of ``frame`` (no copy)."""
    view = frame if isinstance(frame, memoryview) else memoryview(frame)
    inband_len, nbufs = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    if nbufs == 0:
        return pickle.loads(view[pos : pos + inband_len])
    lens = []
    for _ in range(nbufs):
        lens.append(_LEN.unpack_from(view, pos)[0])
        pos += _LEN.size
    inband = view[pos : pos + inband_len]
    pos += inband_len
    buffers = []
    for n in lens:
        pos = _align(pos)
        buffers.append(view[pos : pos + n])
        pos += n
    return pickle.loads(inband, buffers=buffers)


def pickle_code(obj: Any) -> bytes:
    """Pickle a function or class by value for the function table."""
    return cloudpickle.dumps(obj, protocol=5)


def unpickle(data: bytes) -> Any:
    return pickle.loads(data)


def unpicklable_message(name: str, args: Sequence[Any], kwargs: dict[str, Any], err: Exception) -> str:
    """Which argument of ``name`` could not be serialized, and why (for a TypeError)."""
    for index, value in enumerate(args):
        try:
            serialize(value)
        except Exception as inner:
            return (
                f"Could not serialize argument {index} ({type(value).__name__}) of {name}(): "
                f"{inner}. Arguments must be picklable (cloudpickle)."
            )
    for key, value in kwargs.items():
        try:
            serialize(value)
        except Exception as inner:
            return (
                f"Could not serialize keyword argument {key!r} ({type(value).__name__}) of "
                f"{name}(): {inner}. Arguments must be picklable (cloudpickle)."
            )
    return f"Could not serialize the arguments of {name}(): {err}"
