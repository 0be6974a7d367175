"""Runtime environments: what a job, task or actor needs on the node that runs it.

``runtime_env`` is a dict with any of ``env_vars``, ``working_dir``, ``py_modules``, ``pip``,
``config`` (``setup_timeout_seconds``, ``eager_install``) and ``excludes``; give it to
``rayr.init``, ``.options()`` of tasks and actors, or ``rayr job submit``.
"""

from __future__ import annotations

from typing import Any

from rayr.runtime_env.validation import VALID_FIELDS, merge, validate


class RuntimeEnvConfig(dict):
    """Ray's ``RuntimeEnvConfig``: ``setup_timeout_seconds`` and ``eager_install``."""

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        validate({"config": dict(self)})


class RuntimeEnv(dict):
    """Ray's ``RuntimeEnv``: a checked runtime_env dict, usable wherever one is accepted.

    Raises:
        ValueError: an unknown field or a bad value.
    """

    def __init__(self, **fields: Any) -> None:
        super().__init__({k: dict(v) if isinstance(v, RuntimeEnvConfig) else v for k, v in fields.items()})
        validate(dict(self))


__all__ = ["VALID_FIELDS", "RuntimeEnv", "RuntimeEnvConfig", "merge", "validate"]
