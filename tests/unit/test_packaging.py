"""The wheel is what users install: it holds every package (rayr.backends mapped from backends/),
py.typed and the license, reports one version everywhere, and installs and runs in a fresh venv.

Built offline from a copy of the source tree (no build outputs in the checkout), without build
isolation, so no index is needed.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import rayr

ROOT = Path(__file__).resolve().parents[2]
BUILD_OUTPUTS = ("build", "dist", "site", "*.egg-info", "__pycache__", ".git", ".venv", ".*_cache")


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
          str(source)], cwd=tmp)
    (built,) = (tmp / "dist").glob("*.whl")
    yield built


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_wheel_holds_every_package_and_the_typing_marker(wheel):
    names = _names(wheel)
    # every directory of rayr/ with an __init__.py ships, found without a hand-kept list
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "rayr").rglob("__init__.py")}
    assert {"rayr/core", "rayr/worker", "rayr/monitor", "rayr/raylet", "rayr/gcs"} <= packages
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    # backends/ installs as rayr.backends (never as a top-level `backends`)
    for module in (ROOT / "backends").glob("*.py"):
        assert f"rayr/backends/{module.name}" in names
    assert not any(n.startswith("backends/") for n in names)
    assert "rayr/py.typed" in names
    assert "rayr/gcs/scripts.py" in names  # the Lua scripts
    assert not any(n.startswith(("tests/", "scripts/", "examples/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    assert meta["Name"] == "rayr"
    assert meta["Version"] == rayr.__version__
    assert wheel.name == f"rayr-{rayr.__version__}-py3-none-any.whl"
    classifiers = meta.get_all("Classifier")
    for wanted in ("License :: OSI Approved :: Apache Software License", "Operating System :: POSIX :: Linux",
                   "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"):
        assert wanted in classifiers
    assert any(url.startswith("Changelog, ") for url in meta.get_all("Project-URL"))
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("pathspec") for r in requires)
    assert any(r.startswith("mkdocs") and 'extra == "docs"' in r for r in requires)


def test_the_wheel_installs_and_reports_its_version(wheel, tmp_path):
    venv = tmp_path / "venv"
    # the dependencies come from this interpreter's site-packages (offline); rayr from the wheel
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "-q", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv's rayr
    probe = "import rayr, rayr.backends.shm; print(rayr.__version__, rayr.__file__)"
    where = _run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout.split()
    assert where[0] == rayr.__version__
    assert where[1].startswith(str(venv))
    version = _run([str(venv / "bin" / "rayr"), "--version"], env=env, cwd=tmp_path).stdout
    assert version.strip() == f"rayr, version {rayr.__version__}"


def test_the_ssh_config_installs_the_wheel_not_the_index(wheel):
    """rayr is not published: configs/ssh.yaml ships the wheel this tree builds to every node."""
    cfg = yaml.safe_load((ROOT / "configs" / "ssh.yaml").read_text())
    (remote,) = [path for path in cfg["file_mounts"] if path.endswith(".whl")]
    assert Path(remote).name == wheel.name
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert installs and all(remote in c for c in installs)
    assert not any(c.rstrip().endswith(" rayr") for c in installs)
