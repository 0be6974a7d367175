"""The cluster YAML: the shipped examples load, and bad files name every bad field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rayr.autoscaler.config import (
    ClusterConfigError,
    json_schema,
    load_cluster_config,
    validate_cluster_config,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD: dict[str, Any] = {
    "cluster_name": "t",
    "max_workers": 3,
    "provider": {"type": "local"},
    "available_node_types": {
        "head": {"resources": {"CPU": 1}},
        "cpu_worker": {"resources": {"CPU": 2}, "min_workers": 1, "max_workers": 3},
    },
    "head_node_type": "head",
}


def test_shipped_configs_load() -> None:
    local = load_cluster_config(ROOT / "configs" / "local.yaml")
    assert local.provider.type == "local" and local.head_node_type in local.available_node_types
    assert local.worker_types() == ["special_worker"] and local.type_max("special_worker") == 4
    ssh = load_cluster_config(ROOT / "configs" / "ssh.yaml")
    assert ssh.provider.type == "ssh" and len(ssh.provider.worker_ips) == 2
    assert ssh.auth.ssh_user == "ubuntu"


def test_defaults() -> None:
    cfg = validate_cluster_config(GOOD)
    assert cfg.upscaling_speed == 1.0 and cfg.idle_timeout_minutes == 5.0
    assert cfg.object_store.backend == "shm" and cfg.redis.port is None
    assert cfg.type_max("head") == 3  # max_workers of a type defaults to the cluster's


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

BAD = [
    ("available_node_types.cpu_worker.max_workers", 0,
     "available_node_types.cpu_worker.max_workers: must be >= min_workers (1)"),
    ("head_node_type", "nope", "head_node_type: must name one of available_node_types (head, cpu_worker)"),
    ("provider.type", "aws", "provider.type: input should be 'local' or 'ssh'"),
    ("provider", DELETE, "provider: required field is missing"),
    ("max_workrs", 3, "max_workrs: unknown field; valid fields here are: cluster_name, max_workers"),
    ("available_node_types.cpu_worker.min_worker", 1,
     "available_node_types.cpu_worker.min_worker: unknown field; valid fields here are: resources, "
     "min_workers"),
    ("upscaling_speed", 0, "upscaling_speed: Input should be greater than 0"),
    ("idle_timeout_minutes", "soon", "idle_timeout_minutes: Input should be a valid number"),
    ("cluster_name", "my cluster", "cluster_name: must contain only letters"),
    ("available_node_types.cpu_worker.resources", {"CPU": "many"},
     "available_node_types.cpu_worker.resources.CPU: Input should be a valid number"),
    ("available_node_types.cpu_worker.resources", {"GPU": -1},
     "available_node_types.cpu_worker.resources.GPU: must be a finite number >= 0"),
    ("max_workers", 0, "max_workers: must be >= the sum of the worker types' min_workers (1)"),
    ("redis.port", 70000, "redis.port: Input should be less than or equal to 65535"),
    ("object_store.backend", "nvme", "object_store.backend: must be one of"),
    ("provider.worker_ips", ["10.0.0.2"], "provider.worker_ips: only for 'type: ssh'"),
    ("provider", {"type": "ssh"}, "provider.head_ip: required with 'type: ssh'"),
    ("setup_commands", "pip install x", "setup_commands: Input should be a valid list"),
    ("redis", {"address": "bogus://h"}, "redis.address: Redis address 'bogus://h' has scheme 'bogus'"),
    ("redis", {"address": "redis://:pw@h:6379"}, "redis.address: give the password as redis.password"),
    ("redis", {"address": "redis://h:6379", "port": 7000},
     "redis.port: only for a Redis that `rayr up` starts"),
    ("redis", {"address": "redis://h:6379", "persistence": True},
     "redis.persistence: only for a Redis that `rayr up` starts"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_field_is_named_with_what_was_expected(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_config(_with(path, value), "c.yaml")
    message = str(info.value)
    assert message.startswith("invalid cluster config c.yaml:")
    assert expected in message, message


def test_every_bad_field_is_reported_at_once() -> None:
    data = _with("max_workrs", 1)
    data["upscaling_speed"] = -1
    data["available_node_types"]["cpu_worker"]["min_workers"] = "x"
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_config(data)
    paths = [p for p, _ in info.value.problems]
    assert sorted(paths) == ["available_node_types.cpu_worker.min_workers", "max_workrs", "upscaling_speed"]


def test_ssh_needs_user_and_hosts() -> None:
    data = _with("provider", {"type": "ssh", "head_ip": "10.0.0.1"})
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_config(data)
    assert [p for p, _ in info.value.problems] == ["auth.ssh_user", "provider.worker_ips"]


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="cannot read it"):
        load_cluster_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ClusterConfigError, match="must be a mapping of fields, got list"):
        load_cluster_config(bad)
    bad.write_text("a: [1\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        load_cluster_config(bad)


def test_json_schema_names_the_fields() -> None:
    schema = json_schema()
    assert {"cluster_name", "available_node_types", "provider", "redis"} <= set(schema["properties"])
    assert "head_node_type" in schema["required"]
    json.dumps(schema)


def test_nodes_on_an_existing_redis_start_on_it_under_the_files_name() -> None:
    from rayr.autoscaler.node_provider import node_env, start_command

    data = _with("provider", {"type": "ssh", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]})
    data["auth"] = {"ssh_user": "me"}
    data["redis"] = {"address": "rediss://redis.internal:6380", "password": "pw"}
    cfg = validate_cluster_config(data)
    env = node_env(cfg, "head", "10.0.0.1", "head", "rediss://redis.internal:6380", "pw")
    assert env["RAYR_REDIS_ADDRESS"] == "rediss://redis.internal:6380" and env["RAYR_CLUSTER_NAME"] == "t"
    head = start_command(cfg, "head", head=True, port=6379)[-1]
    assert '--redis-address="$RAYR_REDIS_ADDRESS"' in head and "--port" not in head
    assert '--address="$RAYR_HEAD_ADDRESS"' in start_command(cfg, "cpu_worker", head=False)[-1]
