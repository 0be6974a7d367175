"""GPUs without a GPU: explicit ``num_gpus``, a fake ``nvidia-smi`` for detection, and real
raylets and workers giving each task or actor specific ids in ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import os
import stat
import time

import pytest

import rayr
from rayr.testing import Cluster

FAKE_SMI = "#!/bin/sh\nfor i in 1 2 3; do echo 'NVIDIA A100-SXM4-40GB'; done\n"


@pytest.fixture(scope="module")
def gpu_cluster(redis_url, tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("fake-bin")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    saved = {k: os.environ.get(k) for k in ("PATH", "CUDA_VISIBLE_DEVICES")}
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{saved['PATH']}"
    c = Cluster(redis_url)
    try:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        first = c.add_node(num_cpus=4, num_gpus=2, resources={"first": 1})
        # detected: what CUDA_VISIBLE_DEVICES lists when it is set; its ids come back as strings
        os.environ["CUDA_VISIBLE_DEVICES"] = "5,7"
        second = c.add_node(num_cpus=2, resources={"second": 1})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c, first, second
    rayr.shutdown()
    c.shutdown()


@rayr.remote
class Rendezvous:
    """Lets tasks prove they ran at the same time: each arrives, then waits for the others."""

    def __init__(self) -> None:
        self.arrived = 0

    def arrive(self) -> int:
        self.arrived += 1
        return self.arrived

    def count(self) -> int:
        return self.arrived


def _meet(rendezvous, n: int) -> None:
    rayr.get(rendezvous.arrive.remote())
    deadline = time.monotonic() + 120
    while rayr.get(rendezvous.count.remote()) < n:
        assert time.monotonic() < deadline, "the other tasks never ran alongside this one"
        time.sleep(0.01)


@rayr.remote(num_gpus=1)
def one_gpu(rendezvous=None, n=0):
    if rendezvous is not None:
        _meet(rendezvous, n)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), rayr.get_gpu_ids()


@rayr.remote(num_gpus=0.5, resources={"first": 0.1})
def half_gpu(rendezvous, n):
    _meet(rendezvous, n)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), rayr.get_gpu_ids()


def test_the_cluster_sees_gpus_and_their_type(gpu_cluster):
    _, first, second = gpu_cluster
    by_node = {n["NodeID"]: n["Resources"] for n in rayr.nodes() if n["Alive"]}
    assert by_node[first]["GPU"] == 2.0  # explicit, though the fake nvidia-smi lists three
    assert by_node[second]["GPU"] == 2.0  # detected: CUDA_VISIBLE_DEVICES named two
    assert by_node[first]["accelerator_type:A100"] == 1.0


def test_concurrent_tasks_get_distinct_gpus_and_see_only_theirs(gpu_cluster):
    meet = Rendezvous.remote()
    results = rayr.get([one_gpu.options(resources={"first": 0.1}).remote(meet, 2) for _ in range(2)])
    ids = set()
    for _pid, visible, gpu_ids in results:
        assert len(gpu_ids) == 1 and visible == str(gpu_ids[0])
        ids.add(visible)
    assert ids == {"0", "1"}  # both at once on the node with GPUs 0 and 1


def test_a_process_never_runs_tasks_with_other_devices(gpu_cluster):
    seen: dict[int, set[str | None]] = {}
    for pid, visible, _ in rayr.get([one_gpu.remote() for _ in range(12)]):
        seen.setdefault(pid, set()).add(visible)
    assert all(len(devices) == 1 for devices in seen.values()), seen


def test_fractional_gpus_share_one_device(gpu_cluster):
    meet = Rendezvous.remote()
    results = rayr.get([half_gpu.remote(meet, 2) for _ in range(2)])
    (visible_a, ids_a), (visible_b, ids_b) = results
    assert visible_a == visible_b and ids_a == ids_b and len(ids_a) == 1


def test_ids_from_cuda_visible_devices_are_strings(gpu_cluster):
    pid, visible, gpu_ids = rayr.get(one_gpu.options(resources={"second": 0.1}).remote())
    assert gpu_ids in (["5"], ["7"]) and visible == gpu_ids[0]


def test_cpu_tasks_get_no_gpu_ids(gpu_cluster):
    @rayr.remote
    def cpu_only():
        return rayr.get_gpu_ids(), rayr.get_runtime_context().get_accelerator_ids()

    assert rayr.get(cpu_only.remote()) == ([], {"GPU": []})
    assert rayr.get_gpu_ids() == []  # the driver was given none


def test_an_actor_holds_its_gpu_while_tasks_get_the_other(gpu_cluster):
    _, first, _ = gpu_cluster

    @rayr.remote(num_gpus=1, resources={"second": 0.1})
    class Model:
        def devices(self):
            ctx = rayr.get_runtime_context()
            return os.environ.get("CUDA_VISIBLE_DEVICES"), rayr.get_gpu_ids(), ctx.get_accelerator_ids()

    model = Model.remote()
    visible, gpu_ids, accel = rayr.get(model.devices.remote())
    assert gpu_ids in (["5"], ["7"]) and visible == gpu_ids[0] and accel == {"GPU": gpu_ids}
    others = rayr.get([one_gpu.options(resources={"second": 0.1}).remote() for _ in range(3)])
    assert {v for _, v, _ in others} == {"5", "7"} - {visible}
    rayr.kill(model)


def test_accelerator_type_places_the_task(gpu_cluster):
    _, first, _ = gpu_cluster

    @rayr.remote(accelerator_type="A100", num_gpus=1)
    def typed():
        return rayr.get_runtime_context().get_node_id()

    nodes = set(rayr.get([typed.remote() for _ in range(4)]))
    assert nodes <= {n["NodeID"] for n in rayr.nodes() if n["Alive"]}
    assert rayr.available_resources().get("accelerator_type:A100", 0) > 0
