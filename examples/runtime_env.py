"""Runtime environments: environment variables and a working directory shipped to the workers.

A ``working_dir`` is zipped on this host (leaving out what ``excludes`` and any ``.gitignore``
in it match), stored once in the cluster by content hash, unpacked on each node and made the
tasks' current directory and importable. (``pip`` installs packages into a virtualenv per
requirement set; it is left out here only to keep the example fast and offline.)

    python examples/runtime_env.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import rayr as ray


def make_project(root: Path) -> None:
    """A small project: a module of its own, a data file, and files that should not ship."""
    (root / "helpers.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (root / "settings.txt").write_text("mode=demo\n")
    (root / "debug.log").write_text("noise\n")
    (root / "scratch").mkdir()
    (root / "scratch" / "big.bin").write_bytes(b"\0" * 1000)
    (root / ".gitignore").write_text("*.log\n")  # honoured, as in Ray


@ray.remote
def inspect() -> dict[str, object]:
    import helpers  # from the working_dir: it is on the tasks' sys.path

    return {
        "greeting": helpers.greet("rayr"),
        "mode": Path("settings.txt").read_text().strip(),  # the cwd is the unpacked working_dir
        "shipped": sorted(os.listdir(".")),
        "MODE": os.environ.get("MODE"),
    }


@ray.remote
def mode() -> str | None:
    return os.environ.get("MODE")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        make_project(project)
        # the job's env: every task and actor of this driver runs in it
        ray.init(num_cpus=2, runtime_env={
            "working_dir": str(project),
            "excludes": ["scratch/"],
            "env_vars": {"MODE": "job"},
        })
        info = ray.get(inspect.remote())
        print("greeting:", info["greeting"])
        print("settings:", info["mode"])
        print("shipped files:", info["shipped"])
        print("MODE in the job's env:", info["MODE"])
        # a task's own env is merged over the job's (its env_vars win)
        task_env = {"env_vars": {"MODE": "task"}}
        print("MODE in a task's env:", ray.get(mode.options(runtime_env=task_env).remote()))
        ray.shutdown()


if __name__ == "__main__":
    main()
