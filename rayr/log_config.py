"""Ray's ``LoggingConfig``: how a job's driver and workers format Python ``logging`` records.

``init(logging_config=LoggingConfig(encoding="JSON"))`` puts one handler on the root logger
of the driver and of every worker while it runs the job's tasks; each record carries the job,
worker, node, actor and task it came from. A worker's stderr reaches the driver like any other
output (``log_to_driver``) and stays in its log file.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

ENCODINGS = ("TEXT", "JSON")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CONTEXT_FIELDS = ("job_id", "worker_id", "node_id", "actor_id", "task_id")


@dataclass(frozen=True)
class LoggingConfig:
    """``encoding``: ``"TEXT"`` or ``"JSON"``; ``log_level``: the root logger's level;
    ``additional_log_standard_attrs``: more ``LogRecord`` attributes to show (e.g. ``"name"``).

    Raises:
        ValueError: an unknown encoding, level or record attribute.
    """

    encoding: str = "TEXT"
    log_level: str = "INFO"
    additional_log_standard_attrs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"LoggingConfig encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if str(self.log_level).upper() not in LEVELS:
            raise ValueError(f"LoggingConfig log_level must be one of {LEVELS}, got {self.log_level!r}")
        known = logging.LogRecord("", 0, "", 0, "", None, None).__dict__
        bad = [a for a in self.additional_log_standard_attrs if a not in known]
        if bad:
            raise ValueError(f"LoggingConfig additional_log_standard_attrs: {bad} are not LogRecord "
                             f"attributes (valid: {', '.join(sorted(known))})")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class _Formatter(logging.Formatter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.json = config.get("encoding") == "JSON"
        self.extra = list(config.get("additional_log_standard_attrs") or [])

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: getattr(record, k, None) for k in CONTEXT_FIELDS}
        fields = {k: v for k, v in fields.items() if v}
        extra = {a: getattr(record, a, None) for a in self.extra}
        if self.json:
            out = {"asctime": self.formatTime(record), "levelname": record.levelname,
                   "message": record.getMessage(), "filename": record.filename,
                   "lineno": record.lineno, **extra, **fields}
            if record.exc_info:
                out["exc_text"] = self.formatException(record.exc_info)
            return json.dumps(out, default=str)
        text = (f"{self.formatTime(record)}\t{record.levelname} {record.filename}:{record.lineno} -- "
                f"{record.getMessage()}")
        tail = " ".join(f"{k}={v}" for k, v in {**extra, **fields}.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{text} {tail}" if tail else text


class _ContextFilter(logging.Filter):
    def __init__(self, context: Callable[[], dict[str, str | None]]) -> None:
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_installed: logging.Handler | None = None


def installed() -> bool:
    """Whether a job's handler is on the root logger now."""
    return _installed is not None


def apply(config_json: str | None, context: Callable[[], dict[str, str | None]]) -> None:
    """Install (or, with None, remove) the root logger's handler for a job's config."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed = None
    if not config_json:
        return
    config = json.loads(config_json)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(config))
    handler.addFilter(_ContextFilter(context))
    root.addHandler(handler)
    root.setLevel(str(config.get("log_level", "INFO")).upper())
    _installed = handler
