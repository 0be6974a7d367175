"""Every program in examples/ runs as a user would run it (``python examples/<name>.py``), prints
what it promises, and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# what each example must print (substrings of its output)
EXPECTED: dict[str, list[str]] = {
    "tasks_and_wait": ["squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "sum of squares of 1..4: 30",
                       "first two done: [", "still pending: 0", "timed out as asked"],
    "actors_and_pool": ["counter: [11, 12, 13, 14, 15]", "named actor: 101",
                        "pool, in order: [0, 2, 4, 6, 8, 10, 12, 14]",
                        "pool, as they finish: [0, 2, 4, 6, 8, 10, 12, 14]"],
    "numpy_objects": ["put 32 MB", "same values: True | read-only: True", "column means agree: True",
                      "scaled[0, :3]: [0.0, 2.0, 4.0]"],
    "placement_groups": ["placement group state: CREATED", "task ran in bundle 0: True",
                         "actor in bundle 1: step 1 done", "placement group removed"],
    "runtime_env": ["greeting: hello, rayr", "settings: mode=demo",
                    "shipped files: ['.gitignore', 'helpers.py', 'settings.txt']",
                    "MODE in the job's env: job", "MODE in a task's env: task"],
    "job_submission": ["cluster started", "submitted: rayrsubmit_", "job status: SUCCEEDED",
                       "job output: hello FROM A JOB", "Stopped 5 rayr process(es)."],
    "fault_tolerance": ["finished on a retry after the worker died", "succeeded on attempt 3",
                        "is a RayTaskError: True", "the running call failed:",
                        "actor restarted in a new process: True"],
}


def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


def _started_under(marker: str) -> list[psutil.Process]:
    """Live processes whose command line, environment or working directory names ``marker`` (the
    test's tmp dir: rayr's processes inherit RAYR_TEMP_DIR and TMPDIR under it; a Redis rayr
    starts runs in its session directory there)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            env = proc.environ()
            named = [" ".join(proc.info["cmdline"] or []), env.get("RAYR_TEMP_DIR", ""),
                     env.get("TMPDIR", ""), proc.cwd()]
            if any(marker in text for text in named):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.delenv("RAYR_ADDRESS", raising=False)
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path / "sessions"), "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        out = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        for line in EXPECTED[name]:
            assert line in out.stdout, f"{line!r} not in the output of {name}:\n{out.stdout}{out.stderr}"
    finally:
        # what the example started stops with it (its cluster's daemons die with the driver, or
        # by `rayr stop`); give them a moment, then stop any straggler by pid and fail
        deadline = time.monotonic() + 15
        while (left := _started_under(str(tmp_path))) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in left:
            proc.kill()
    assert not left, f"{name} left processes behind: {[p.info['cmdline'] for p in left]}"
