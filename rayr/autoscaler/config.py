"""The cluster YAML of ``rayr up``: pydantic models shaped like Ray's cluster launcher config,
plus rayr's own ``redis`` and ``object_store`` sections.

:func:`load_cluster_config` reports every bad field at once as ``<dotted.path>: <what was
expected>``, before anything is started.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthConfig(_Strict):
    """How the launcher and the head reach ssh hosts."""

    ssh_user: str | None = None
    ssh_private_key: str | None = None


class ProviderConfig(_Strict):
    """Where nodes come from: ``local`` (processes on this host) or ``ssh`` (listed hosts)."""

    type: Literal["local", "ssh"]
    # local: the address Redis binds to (default 127.0.0.1); ssh: the head host
    head_ip: str | None = None
    # ssh only: hosts worker nodes may use, one node per host
    worker_ips: list[str] = Field(default_factory=list)
    ssh_port: int = Field(22, ge=1, le=65535)
    # how to run the rayr CLI on the hosts (e.g. a virtualenv's bin/rayr)
    rayr_command: str = "rayr"
    # where rayr keeps sessions on the hosts; each node gets a directory of its own below it
    remote_temp_dir: str = "/tmp/rayr-up"


class NodeTypeConfig(_Strict):
    """One kind of node: its resources and how many workers of it may run."""

    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: int = Field(0, ge=0)
    max_workers: int | None = Field(default=None, ge=0)
    node_config: dict[str, Any] = Field(default_factory=dict)
    worker_setup_commands: list[str] = Field(default_factory=list)


class RedisConfig(_Strict):
    """The head's Redis (rayr's control plane): one `rayr up` starts, or one that exists."""

    # an existing Redis (any address rayr takes: redis[s]://, redis+sentinel://,
    # redis+cluster://); rayr then starts none, and `rayr down` leaves it running
    address: str | None = None
    # None: a free port is chosen at `rayr up` (local) / 6379 (ssh)
    port: int | None = Field(default=None, ge=1, le=65535)
    password: str | None = None
    # append-only file in the head's session directory
    persistence: bool = False


class ObjectStoreConfig(_Strict):
    """Every node's object store."""

    backend: str = "shm"
    memory: int | None = Field(default=None, gt=0)
    spilling_directory: str | None = None


class ClusterConfig(_Strict):
    """A cluster as ``rayr up`` reads it."""

    cluster_name: str = Field("default", pattern=NAME_PATTERN)
    max_workers: int = Field(2, ge=0)
    upscaling_speed: float = Field(1.0, gt=0)
    idle_timeout_minutes: float = Field(5.0, ge=0)
    provider: ProviderConfig
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    available_node_types: dict[str, NodeTypeConfig]
    head_node_type: str
    # remote path: local path (ssh provider; the local provider's nodes share this host's files)
    file_mounts: dict[str, str] = Field(default_factory=dict)
    initialization_commands: list[str] = Field(default_factory=list)
    setup_commands: list[str] = Field(default_factory=list)
    head_setup_commands: list[str] = Field(default_factory=list)
    worker_setup_commands: list[str] = Field(default_factory=list)
    # empty: rayr's own `rayr stop` + `rayr start ...` with the node type's resources
    head_start_rayr_commands: list[str] = Field(default_factory=list)
    worker_start_rayr_commands: list[str] = Field(default_factory=list)
    redis: RedisConfig = Field(default_factory=lambda: RedisConfig())
    object_store: ObjectStoreConfig = Field(default_factory=lambda: ObjectStoreConfig())
    # rayr's own: how often the autoscaler in the head monitor looks at demand
    autoscaler_interval_s: float = Field(1.0, gt=0)

    def type_max(self, name: str) -> int:
        """A worker type's max_workers (the cluster's max_workers when not given)."""
        value = self.available_node_types[name].max_workers
        return self.max_workers if value is None else value

    def worker_types(self) -> list[str]:
        return [n for n in self.available_node_types if n != self.head_node_type]


def node_resources(node_type: NodeTypeConfig) -> dict[str, float]:
    """The resources a node of this type registers (CPU defaults to this host's count)."""
    out = dict(node_type.resources)
    out.setdefault("CPU", float(os.cpu_count() or 1))
    return out


class ClusterConfigError(ValueError):
    """A bad cluster file; the message lists each bad field's path and what was expected."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"invalid cluster config {source}:"] + [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = getattr(tp, "__args__", ())
    if type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields sit at ``loc`` (so an unknown key can list the valid ones)."""
    tp: Any = ClusterConfig
    for part in loc:
        tp = _unwrap(tp)
        if _is_model(tp):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        else:
            args = getattr(tp, "__args__", ())
            if not args:
                return None
            tp = args[-1]  # dict[str, X] / list[X]: this part is a key or an index
    tp = _unwrap(tp)
    return tp if _is_model(tp) else None


def _describe(item: Any) -> tuple[str, str]:
    loc = tuple(item["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = item["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = ", ".join(model.model_fields) if model else "?"
        return path, f"unknown field; valid fields here are: {valid}"
    if kind == "missing":
        return path, "required field is missing"
    if kind == "literal_error":
        return path, f"{item['msg'].lower()} (got {item.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return path, f"must contain only letters, digits, '_', '.' and '-' (got {item.get('input')!r})"
    return path, f"{item['msg']} (got {item.get('input')!r})"


def _check_node_type(name: str, node_type: NodeTypeConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not re.match(NAME_PATTERN, name):
        problems.append((f"available_node_types.{name}", "a node type name may contain only letters, "
                                                        "digits, '_', '.' and '-'"))
    if node_type.max_workers is not None and node_type.max_workers < node_type.min_workers:
        problems.append((f"available_node_types.{name}.max_workers",
                         f"must be >= min_workers ({node_type.min_workers}), "
                         f"got {node_type.max_workers}"))
    for res, amount in node_type.resources.items():
        if not 0 <= amount < math.inf:  # NaN fails every comparison
            problems.append((f"available_node_types.{name}.resources.{res}",
                             f"must be a finite number >= 0, got {amount}"))
    return problems


def cross_check(cfg: ClusterConfig) -> list[tuple[str, str]]:
    """Checks that span fields (run once every field is valid on its own)."""
    problems: list[tuple[str, str]] = []
    types = cfg.available_node_types
    if cfg.head_node_type not in types:
        names = ", ".join(types) or "none defined"
        problems.append(("head_node_type", f"must name one of available_node_types ({names}), "
                                           f"got {cfg.head_node_type!r}"))
    for name, node_type in types.items():
        problems += _check_node_type(name, node_type)
    workers = [n for n in types if n != cfg.head_node_type]
    total_min = sum(types[n].min_workers for n in workers)
    if total_min > cfg.max_workers:
        problems.append(("max_workers", f"must be >= the sum of the worker types' min_workers "
                                        f"({total_min}), got {cfg.max_workers}"))
    provider = cfg.provider
    if provider.type == "local" and provider.worker_ips:
        problems.append(("provider.worker_ips", "only for 'type: ssh' (the local provider runs every "
                                                "node on this host)"))
    if provider.type == "ssh":
        if not provider.head_ip:
            problems.append(("provider.head_ip", "required with 'type: ssh' (the head host)"))
        if not cfg.auth.ssh_user:
            problems.append(("auth.ssh_user", "required with 'type: ssh'"))
        if workers and not provider.worker_ips and cfg.max_workers > 0:
            problems.append(("provider.worker_ips", "required with 'type: ssh' when workers may "
                                                    "be launched (one host per worker node)"))
    problems += _check_redis(cfg.redis)
    from rayr.object_store.registry import available_backends

    backends = available_backends()
    if cfg.object_store.backend not in backends:
        problems.append(("object_store.backend", f"must be one of {', '.join(backends)}, "
                                                 f"got {cfg.object_store.backend!r}"))
    return problems


def _check_redis(redis: RedisConfig) -> list[tuple[str, str]]:
    if redis.address is None:
        return []
    from rayr.gcs.address import parse, split_password

    problems = []
    try:
        url, in_url = split_password(redis.address)
        parse(url)
    except ValueError as err:
        return [("redis.address", str(err))]
    if in_url:
        problems.append(("redis.address", "give the password as redis.password, not in the address "
                                          "(the address is shown and passed on command lines)"))
    for name in ("port", "persistence"):
        if name in redis.model_fields_set:
            problems.append((f"redis.{name}", "only for a Redis that `rayr up` starts: the one at "
                                              "redis.address is configured where it runs"))
    return problems


def validate_cluster_config(data: Any, source: str = "<data>") -> ClusterConfig:
    """Validate a parsed YAML document.

    Raises:
        ClusterConfigError: every bad field, each as ``path: what was expected``.
    """
    if not isinstance(data, dict):
        raise ClusterConfigError(source, [("(top level)", f"must be a mapping of fields, "
                                                          f"got {type(data).__name__}")])
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as err:
        raise ClusterConfigError(source, [_describe(item) for item in err.errors()]) from None
    problems = cross_check(cfg)
    if problems:
        raise ClusterConfigError(source, problems)
    return cfg


def load_cluster_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster YAML file.

    Raises:
        ClusterConfigError: unreadable, not YAML, or any bad field.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ClusterConfigError(source, [("(file)", f"cannot read it: {err.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClusterConfigError(source, [("(file)", f"not valid YAML: {err}")]) from None
    return validate_cluster_config(data, source)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the cluster file (``rayr up --print-schema``)."""
    return ClusterConfig.model_json_schema()
