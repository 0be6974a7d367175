"""Typing: mypy over the programs in tests/typing/, and the run-time side of the generics.

The ``ok_*`` programs must pass; ``bad_calls.py`` must report exactly the errors its ``# E``
comments mark. mypy runs with the repository's own config (pyproject.toml, which enables
rayr's plugin) and once more with that config less the plugin, as a user without it (or
pyright) sees rayr.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from rayr import ObjectRef, ObjectRefGenerator
from rayr.actor import DEFAULT_ACTOR_OPTIONS, ActorClass, ActorHandle, ActorMethod
from rayr.api import RemoteOptions, remote
from rayr.remote_function import DEFAULT_TASK_OPTIONS, RemoteFunction

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ROOT / "tests" / "typing"
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
MARK = re.compile(r"# E(?:\[(plugin|plain)\])?: ([a-z-]+)")


def _mypy(config: Path, files: list[str], cache: Path) -> set[tuple[str, int, str]]:
    """mypy's errors as (file name, line, error code)."""
    # the plugin is imported by module name: this checkout's, not an installed rayr's
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
         "--no-error-summary", "--no-pretty", *(str(PROGRAMS / f) for f in files)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path},
    )
    assert proc.returncode in (0, 1), f"mypy failed to run:\n{proc.stdout}\n{proc.stderr}"
    errors = set()
    for line in proc.stdout.splitlines():
        match = ERROR.match(line)
        assert match or ": note: " in line, f"unexpected mypy output: {line}"
        if match:
            errors.add((Path(match["path"]).name, int(match["line"]), match["code"]))
    return errors


def _marked(name: str, run: str) -> set[tuple[str, int, str]]:
    """The errors ``name`` marks for the run (``plugin`` or ``plain``)."""
    lines = (PROGRAMS / name).read_text().splitlines()
    return {(name, n, code) for n, text in enumerate(lines, 1)
            for kind, code in MARK.findall(text) if kind in ("", run)}


def test_mypy_with_the_plugin(tmp_path):
    errors = _mypy(ROOT / "pyproject.toml", ["ok_tasks.py", "ok_plugin.py", "bad_calls.py"], tmp_path)
    assert errors == _marked("bad_calls.py", "plugin")


def test_mypy_without_the_plugin(tmp_path):
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "rayr.mypy_plugin" in settings.pop("plugins")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n" + "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                                            for k, v in settings.items()))
    errors = _mypy(config, ["ok_tasks.py", "ok_plain.py", "bad_calls.py"], tmp_path / "cache")
    assert errors == _marked("bad_calls.py", "plain")


def test_every_marked_error_differs_somewhere():
    # each bad line is an error in at least one run, and the runs differ where the plugin helps
    plugin, plain = _marked("bad_calls.py", "plugin"), _marked("bad_calls.py", "plain")
    assert plugin - plain and plain - plugin and plugin & plain


def test_the_typed_options_are_the_runtime_options():
    # @remote(...)'s overloads name every option a task or an actor takes, and no other
    typed = set(RemoteOptions.__annotations__) | {"num_returns"}
    assert typed == set(DEFAULT_TASK_OPTIONS) | set(DEFAULT_ACTOR_OPTIONS)
    assert len(typing.get_overloads(remote)) == 6


def test_generics_cost_nothing_at_run_time():
    ref = ObjectRef[int](b"\x01" * 20, "owner")  # subscripting works, and adds no state
    assert not hasattr(ref, "__dict__")
    assert ObjectRef.__slots__ == ("_id", "_owner", "__weakref__")
    copy = pickle.loads(pickle.dumps(ref))
    assert type(copy) is ObjectRef and copy == ref and copy.owner_address() == "owner"
    assert ObjectRefGenerator[int] and ActorClass[int] and ActorHandle[int]
    assert RemoteFunction[[int], ObjectRef[str]] and ActorMethod[[int], ObjectRef[str]]


def test_remote_is_one_plain_function_at_run_time():
    def f(x: int) -> int:
        return x

    class A:
        pass

    assert isinstance(remote(f), RemoteFunction)
    assert isinstance(remote(num_cpus=2)(f), RemoteFunction)
    assert isinstance(remote(A), ActorClass)
    with pytest.raises(TypeError, match="cannot be called directly"):
        remote(f)(1)
