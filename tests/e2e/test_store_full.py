"""A node store on a full filesystem, and the store files of raylets that died.

The full-filesystem tests run a driver script in a private mount namespace whose /dev/shm is
a 64 MiB tmpfs (``rayr.testing.run_with_tmpfs``): the embedded cluster it starts sees only
that, and the mounts vanish with it.
"""

from __future__ import annotations

import json
import os
import re
import signal

import psutil

import rayr
from rayr.node import free_port
from rayr.scheduling_strategies import NodeAffinitySchedulingStrategy
from rayr.testing import run_cli, run_with_tmpfs

MiB = 1 << 20

FULL_SHM_DRIVER = """
import json, os, subprocess
import numpy as np
import rayr
from rayr.exceptions import ObjectStoreFullError

MiB = 1 << 20
SPILL = {spill!r}
out = {{}}
# a store of 48 MiB fits the 64 MiB /dev/shm, so the raylet picks shm
rayr.init(num_cpus=1, object_store_memory=48 * MiB, object_spilling_directory=SPILL)
from rayr.context import state

out["backend"] = state.core.store.name


@rayr.remote
def big(fill):
    return np.full(40 * MiB, fill, np.uint8)


def attempt(make):
    try:
        return bool((make() == 7).all())
    except ObjectStoreFullError as err:
        return str(err)


def leftovers():
    return [n for d in ("/dev/shm", SPILL) for n in os.listdir(d) if n.endswith(".tmp")]


# another process fills /dev/shm: 40 of its 64 MiB, our store still thinks it is empty
subprocess.run(["sh", "-c", "head -c 41943040 /dev/zero > /dev/shm/filler"], check=True)
out["put"] = attempt(lambda: rayr.get(rayr.put(np.full(40 * MiB, 7, np.uint8))))
out["task"] = attempt(lambda: rayr.get(big.remote(7)))
out["alive"] = rayr.get(rayr.put(5)) == 5  # the driver survived
out["tmp"] = leftovers()
os.unlink("/dev/shm/filler")
out["retry_put"] = attempt(lambda: rayr.get(rayr.put(np.full(40 * MiB, 7, np.uint8))))
out["retry_task"] = attempt(lambda: rayr.get(big.remote(7)))  # the worker survived too
out["tmp"] += leftovers()
rayr.shutdown()
print(json.dumps(out))
"""


def run_driver(tmp_path, spill_mib: int | None) -> dict:
    spill = tmp_path / "spill"
    spill.mkdir()
    mounts = {"/dev/shm": 64 * MiB}
    if spill_mib:
        mounts[str(spill)] = spill_mib * MiB
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path / "sessions")}
    env.pop("RAYR_ADDRESS", None)
    out = run_with_tmpfs(FULL_SHM_DRIVER.format(spill=str(spill)), mounts, env=env, timeout=300)
    assert out.returncode == 0, f"the driver died (exit {out.returncode}):\n{out.stdout}{out.stderr[-3000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "shm"
    assert result["alive"] is True and result["tmp"] == []
    assert result["retry_put"] is True and result["retry_task"] is True
    return result


def test_full_dev_shm_spills_the_new_object(tmp_path, tmpfs_ok):
    result = run_driver(tmp_path, spill_mib=None)  # the spill directory is on disk: room there
    assert result["put"] is True and result["task"] is True


def test_full_dev_shm_and_spill_disk_fail_cleanly(tmp_path, tmpfs_ok):
    result = run_driver(tmp_path, spill_mib=8)
    for what in ("put", "task"):  # a clean error naming where and how much, no crash
        assert isinstance(result[what], str), result
        asked = re.search(r"object of (\d+) bytes in /dev/shm \((\d+) bytes free", result[what])
        assert asked, result[what]
        assert 40 * MiB <= int(asked[1]) < 41 * MiB and int(asked[2]) < 40 * MiB, result[what]
        assert f"spill directory {tmp_path / 'spill'} (" in result[what], result[what]


FULL_SPILL_DRIVER = """
import json
import numpy as np
import rayr
from rayr.exceptions import ObjectStoreFullError

MiB = 1 << 20
rayr.init(num_cpus=1, object_store_memory=40 * MiB, object_spilling_directory={spill!r})
out = {{}}
first = rayr.put(np.full(30 * MiB, 1, np.uint8))
try:
    rayr.put(np.full(30 * MiB, 2, np.uint8))  # needs the first spilled, onto an 8 MiB disk
    out["error"] = None
except ObjectStoreFullError as err:
    out["error"] = str(err)
out["first"] = bool((rayr.get(first) == 1).all())
rayr.shutdown()
print(json.dumps(out))
"""


def test_full_spill_directory_says_so_and_keeps_the_object(tmp_path, tmpfs_ok):
    spill = tmp_path / "spill"
    spill.mkdir()
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path / "sessions")}
    env.pop("RAYR_ADDRESS", None)
    out = run_with_tmpfs(FULL_SPILL_DRIVER.format(spill=str(spill)), {str(spill): 8 * MiB},
                         env=env, timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}:\n{out.stdout}{out.stderr[-3000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and f"spill directory {spill} is full" in result["error"], result
    assert result["first"] is True


# ------------------------------------------------------------ dead raylets' stores

def segments(namespace: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(namespace))


def start_two_nodes(env: dict[str, str]) -> int:
    port = free_port()
    # small stores: shm is picked however little /dev/shm has free
    run_cli("start", "--head", "--port", str(port), "--num-cpus", "1",
            "--object-store-memory", str(64 * MiB), env=env)
    run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
            "--object-store-memory", str(64 * MiB), env=env)
    return port


def kill_node_holding_an_object() -> tuple[str, object]:
    """Store 10 MiB on the second node (the driver holds the ref), SIGKILL that raylet;
    its store namespace and the ref."""
    rayr.init()
    (node,) = [n for n in rayr.nodes() if not n["IsHead"]]

    @rayr.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
    def big():
        import numpy as np

        return np.ones(10 * MiB, np.uint8)

    ref = big.remote()
    ready, _ = rayr.wait([ref], timeout=120, fetch_local=False)
    assert ready
    namespace = node["ObjectStoreSocketName"]
    stored = segments(namespace)
    assert any(not n.endswith(".lock") for n in stored), f"no object of {namespace} in /dev/shm"
    from rayr.context import state

    (pid,) = [n.pid for n in state.core.gcs.list_nodes() if n.node_id == node["NodeID"]]
    raylet = psutil.Process(pid)
    family = [raylet, *raylet.children(recursive=True)]  # its zygote and workers die with it
    raylet.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"left running: {alive}"
    assert segments(namespace) == stored, "nobody cleaned up after the killed raylet yet"
    return namespace, ref


def test_rayr_stop_frees_a_killed_raylets_store(sessions):
    _, env = sessions
    namespace = None
    try:
        start_two_nodes(env)
        try:
            namespace, ref = kill_node_holding_an_object()
        finally:
            rayr.shutdown()
    finally:
        run_cli("stop", env=env)
    assert namespace is not None and segments(namespace) == []


def test_a_new_raylet_frees_a_killed_raylets_store(sessions):
    _, env = sessions
    namespace = None
    try:
        port = start_two_nodes(env)
        try:
            namespace, ref = kill_node_holding_an_object()
            run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", env=env)
            assert segments(namespace) == []  # gone before `rayr stop`
        finally:
            rayr.shutdown()
    finally:
        run_cli("stop", env=env)
