"""GPU ids: detection on this host and the raylet scheduler handing them out, without I/O
(the end-to-end check with real workers is tests/e2e/test_gpus.py)."""

from __future__ import annotations

import os
import stat

import pytest

from rayr import accelerators
from rayr import resources as res
from rayr.raylet.scheduler import QueuedTask, Scheduler, split_kind, worker_kind
from rayr.remote_function import validate_task_options


def task(request: dict[str, float], n: int = 0, env: str = "") -> QueuedTask:
    return QueuedTask("stream", str(n).encode(), b"spec", res.shape_key(request), request, env=env)


def gpu_node(gpus: int = 2, cpus: float = 8) -> Scheduler:
    return Scheduler(total={"CPU": float(cpus), "GPU": float(gpus)}, max_workers=16,
                     gpu_ids=[str(i) for i in range(gpus)])


def test_whole_gpus_get_distinct_ids_and_wait_when_none_is_free():
    s = gpu_node(2)
    a, b, c = task({"GPU": 1}, 1), task({"GPU": 1}, 2), task({"GPU": 1}, 3)
    s.on_tasks([a, b, c])
    assert {a.devices, b.devices} == {"0", "1"} and c in s.overflow and not c.devices
    assert a.kind == "#" + a.devices  # only a worker seeing exactly that GPU runs it
    s.on_worker_ready("w", a.kind)
    (d,) = s.dispatches()
    assert d.worker == "w" and d.task is a
    s.on_task_done("w")
    assert c.devices == "0" or c.devices == a.devices  # the freed id went to the waiting task
    assert c in s.ready


def test_fractional_gpus_share_one_id_and_pack():
    s = gpu_node(2)
    tasks = [task({"GPU": 0.5}, i) for i in range(4)]
    s.on_tasks(tasks)
    ids = [t.devices for t in tasks]
    assert ids.count("0") == 2 and ids.count("1") == 2  # packed: two halves per GPU
    assert s.gpu_used == {"0": 1.0, "1": 1.0}
    s.on_tasks([task({"GPU": 1}, 9)])
    assert s.overflow  # no whole GPU is free although shares are in use
    big = s.overflow[0]
    s.remove_queued(lambda t: t is tasks[0])
    s.remove_queued(lambda t: t is tasks[1])
    assert big.devices == "0" and big in s.ready and s.gpu_used == {"0": 1.0, "1": 1.0}


def test_two_gpus_for_one_task_and_freeing_on_worker_death():
    s = gpu_node(4)
    t = task({"GPU": 2}, 1)
    s.on_tasks([t])
    assert t.devices == "0,1" and t.gpu_share == 1.0
    s.on_worker_ready("w", t.kind)
    s.dispatches()
    assert s.on_worker_died("w") is t
    assert s.gpu_used == {} and s.available["GPU"] == 4.0


def test_a_blocked_worker_gives_back_its_cpus_but_keeps_its_gpus():
    s = gpu_node(1, cpus=1)
    t = task({"CPU": 1, "GPU": 1}, 1)
    s.on_tasks([t])
    s.on_worker_ready("w", t.kind)
    s.dispatches()
    s.on_worker_blocked("w")
    assert s.available == {"CPU": 1.0, "GPU": 0.0} and s.gpu_used == {"0": 1.0}
    s.on_worker_unblocked("w")
    s.on_worker_blocked("w")
    s.on_task_done("w")  # done while blocked: the GPU comes back once, the CPU is not doubled
    assert s.available == {"CPU": 1.0, "GPU": 1.0} and s.gpu_used == {}


def test_an_actor_keeps_its_gpus_for_life():
    s = gpu_node(2)
    creation = task({"GPU": 1}, 1)
    creation.actor, creation.lifetime = "a1", {"GPU": 1.0}
    s.on_tasks([creation])
    s.on_worker_ready("w", creation.kind)
    s.dispatches()
    s.on_actor_ready("w")
    assert s.gpu_used == {creation.devices: 1.0} and s.available["GPU"] == 1.0
    other = task({"GPU": 1}, 2)
    s.on_tasks([other])
    assert other.devices and other.devices != creation.devices
    s.on_actor_died("w")
    assert s.gpu_used == {other.devices: 1.0} and s.available["GPU"] == 1.0


def test_placement_group_gpus_get_ids_too():
    s = gpu_node(2)
    assert s.reserve_bundles("pg", [(0, {"GPU": 1.0})])
    inside = task(res.renamed_request({"GPU": 1.0}, "pg", 0), 1)
    s.on_tasks([inside])
    assert inside.devices in ("0", "1")
    outside = task({"GPU": 1}, 2)
    s.on_tasks([outside])
    assert outside.devices and outside.devices != inside.devices


def test_an_idle_worker_seeing_a_free_gpu_is_reused():
    s = gpu_node(2)
    s.on_worker_ready("w1", worker_kind("", "1"))  # left idle by an earlier task on GPU 1
    t = task({"GPU": 1}, 1)
    s.on_tasks([t])
    assert t.devices == "1"  # not the lowest free id: the one a process already sees
    (d,) = s.dispatches()
    assert d.worker == "w1"


def test_default_workers_never_run_gpu_tasks_and_planning_starts_the_right_kind():
    s = gpu_node(1)
    s.on_worker_ready("cpu-worker")
    t = task({"GPU": 1}, 1, env="abc")
    s.on_tasks([t])
    assert s.dispatches() == []
    plan, _ = s.plan_workers()
    assert plan.get(worker_kind("abc", "0")) == 1
    assert split_kind(worker_kind("abc", "0,1")) == ("abc", "0,1")
    assert split_kind("abc") == ("abc", "")


def test_num_gpus_above_one_must_be_whole_and_accelerator_type_is_a_resource():
    with pytest.raises(ValueError, match="whole number"):
        validate_task_options({"num_gpus": 1.5})
    assert validate_task_options({"num_gpus": 2}).resources["GPU"] == 2.0
    opts = validate_task_options({"accelerator_type": "A100"})
    assert opts.resources["accelerator_type:A100"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="accelerator_type"):
        validate_task_options({"accelerator_type": 3})


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\nfor i in 1 2 3; do echo 'NVIDIA A100-SXM4-40GB'; done\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_detection_from_nvidia_smi_and_cuda_visible_devices(fake_nvidia_smi):
    assert accelerators.detect({}) == (3, "A100")
    assert accelerators.detect({"CUDA_VISIBLE_DEVICES": "2,0"}) == (2, "A100")
    assert accelerators.detect({"CUDA_VISIBLE_DEVICES": ""}) == (0, None)
    assert accelerators.node_gpu_ids(2, {}) == (["0", "1"], False)
    assert accelerators.node_gpu_ids(2, {"CUDA_VISIBLE_DEVICES": "5,7,9"}) == (["5", "7"], True)
    assert accelerators.node_gpu_ids(0.5, {}) == (["0"], False)


def test_no_nvidia_smi_means_no_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert accelerators.detect({}) == (0, None)


def test_type_names():
    assert accelerators.type_of("Tesla V100-SXM2-16GB") == "V100"
    assert accelerators.type_of("NVIDIA H200") == "H200"
    assert accelerators.type_of("NVIDIA GeForce RTX 4090") == "RTX4090"
