"""The Dockerfile and docker-compose.yml: no Docker engine here, so they are parsed and their
rayr commands checked against the CLI (the topology itself runs in tests/e2e/test_netns.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import yaml

from rayr.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {"FROM", "COPY", "RUN", "USER", "ENV", "WORKDIR", "CMD", "ENTRYPOINT", "EXPOSE", "ARG",
                "LABEL"}


def _parses(args: list[str]) -> None:
    """``rayr args...`` parses (every option and value known to the CLI); nothing runs."""
    assert args[0] == "rayr", args
    command = cli.commands[args[1]]
    assert isinstance(command, click.Command)
    command.make_context(args[1], list(args[2:]))


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word, rest))
    return out


def test_the_dockerfile_is_well_formed():
    instructions = _instructions()
    assert {word for word, _ in instructions} <= INSTRUCTIONS
    assert instructions[0][0] == "FROM" and re.fullmatch(r"python:3\.1[1-3][\w.-]*", instructions[0][1])
    assert ("USER", "rayr") in instructions  # not root
    cmd = json.loads(dict(instructions)["CMD"])  # exec form: signals reach rayr, not a shell
    _parses(cmd)
    assert "--block" in cmd
    assert ".git" in (ROOT / ".dockerignore").read_text().split()


def test_the_compose_file_runs_redis_a_head_and_workers():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "head", "worker"}
    for name in ("head", "worker"):
        service = services[name]
        _parses(service["command"])
        assert "--block" in service["command"]
        assert service["environment"] == ["RAYR_REDIS_PASSWORD"]  # by environment, never an argument
        assert not any("RAYR_REDIS_PASSWORD" in part for part in service["command"])
    assert "--redis-address" in services["head"]["command"] and "--address" in services["worker"]["command"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert services["head"]["depends_on"]["redis"]["condition"] == "service_healthy"
    redis_command = " ".join(services["redis"]["command"])
    assert "maxmemory-policy noeviction" in redis_command and "--requirepass" not in redis_command
