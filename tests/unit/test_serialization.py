from __future__ import annotations

import mmap

import numpy as np
import pytest

from rayr import serialization
from rayr.core.submitter import PLAIN_ARGS
from rayr.serialization import ALIGN, deserialize, dumps, serialize
from rayr.task_spec import ArgRef


@pytest.mark.parametrize("value", [0, "s", b"b", [1, {"a": (2, 3)}], None, {1, 2}, 3.5])
def test_roundtrip_plain(value):
    assert deserialize(dumps(value)) == value


def test_functions_travel_by_value():
    k = 3
    fn = deserialize(dumps(lambda x: x * k))
    assert fn(2) == 6


def test_numpy_buffers_out_of_band_and_aligned():
    arr = np.arange(1000, dtype=np.float64)
    ser = serialize({"a": arr, "tag": "x"})
    assert len(ser.buffers) == 1
    assert len(ser.inband) < 1000  # the array data is not in the pickle
    frame = ser.to_bytes()
    assert len(frame) == ser.total_size
    out = deserialize(frame)
    assert np.array_equal(out["a"], arr) and out["tag"] == "x"


def test_deserialize_is_zero_copy_over_a_mapping():
    arr = np.arange(10_000, dtype=np.int32)
    ser = serialize(arr)
    mapping = mmap.mmap(-1, ser.total_size)
    ser.write_to(memoryview(mapping))
    view = memoryview(mapping).toreadonly()
    out = deserialize(view)
    assert np.array_equal(out, arr)
    assert not out.flags.writeable
    # writing through the mapping shows up in the array: it is a view, not a copy
    start = out.ctypes.data - np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    assert start % ALIGN == 0
    mapping[start : start + 4] = np.int32(777).tobytes()
    assert out[0] == 777


def test_refs_inside_values_are_collected():
    class FakeRef:
        def __reduce__(self):
            serialization.note_serialized_ref(self)
            return (int, (1,))

    ser = serialize([FakeRef(), {"k": FakeRef()}])
    assert len(ser.contained_refs) == 2
    assert serialize([1]).contained_refs == []


def test_unpicklable_raises():
    import threading

    with pytest.raises(TypeError):
        serialize(threading.Lock())


@pytest.mark.parametrize("call", [
    ((1, "two", b"3", 4.5, None, True), {"k": "v"}),
    ((ArgRef(0), 7), {"ref": ArgRef(1)}),
    ((), {"big": b"x" * 100_000}),
])
def test_plain_call_arguments_pickle_as_cloudpickle_would(call):
    """The submitter pickles plain arguments (and ArgRef placeholders) with the standard
    pickler: the frame must be the one ``serialize`` makes, so executors read both alike."""
    args, kwargs = call
    assert all(type(v) in PLAIN_ARGS for v in (*args, *kwargs.values()))
    plain = serialization.serialize_plain(call)
    assert plain.to_bytes() == serialize(call).to_bytes()
    back_args, back_kwargs = deserialize(plain.to_bytes())
    assert [type(a) for a in back_args] == [type(a) for a in args]
    assert back_kwargs.keys() == kwargs.keys()
