"""A node's store past its capacity spills to disk, and every object stays readable."""

from __future__ import annotations

import os

import numpy as np
import pytest

import rayr
from rayr.exceptions import ObjectStoreFullError

MB = 1_000_000


@pytest.fixture
def sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYR_TEMP_DIR", str(tmp_path / "rayr-sessions"))
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    return tmp_path


@pytest.mark.parametrize("backend", ["shm", "mmap"])
def test_four_times_the_capacity_round_trips(sessions, backend):
    spill = sessions / "spill"
    rayr.init(num_cpus=1, object_store_memory=40 * MB, object_store_backend=backend,
              object_spilling_directory=str(spill))
    try:
        from rayr.context import state

        store = state.core.store
        assert store.name == backend
        refs = [rayr.put(np.full(10 * MB, i % 251, dtype=np.uint8)) for i in range(16)]  # 160 MB
        usage = store.usage()
        assert usage.used_bytes <= 40 * MB and usage.spilled_objects > 0
        # the rest is the live node's lock file (rayr/object_store/orphans.py)
        assert len([n for n in os.listdir(spill) if not n.endswith(".lock")]) == usage.spilled_objects

        @rayr.remote
        def check(arr, i):
            return bool((arr == i % 251).all()) and arr.size == 10 * MB

        assert rayr.get([check.remote(ref, i) for i, ref in enumerate(refs)])  # spilled ones too
        for i, ref in enumerate(refs):
            assert int(rayr.get(ref)[12345]) == i % 251
        del refs
    finally:
        rayr.shutdown()
    assert os.listdir(spill) == [], "spill files must go with their objects or the node"


def test_full_store_without_room_says_so(sessions):
    rayr.init(num_cpus=1, object_store_memory=20 * MB)
    try:
        with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
            rayr.put(np.zeros(30 * MB, dtype=np.uint8))
        assert rayr.get(rayr.put(5)) == 5  # nothing else was disturbed
    finally:
        rayr.shutdown()
