"""What tasks and actors print shows up in the driver, prefixed Ray's way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import rayr

    rayr.init(num_cpus=2, log_to_driver={log_to_driver})

    @rayr.remote
    def shout(i):
        print(f"task line {{i}}")
        print(f"task error {{i}}", file=sys.stderr)
        return i

    @rayr.remote
    class Speaker:
        def say(self):
            print("actor line")
            return 1

    rayr.get([shout.remote(i) for i in range(20)])
    rayr.get(Speaker.remote().say.remote())
    time.sleep(0.5)
    rayr.shutdown()
    """
)


def run(tmp_path, log_to_driver: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYR_TEMP_DIR": str(tmp_path / "rayr-sessions")}
    env.pop("RAYR_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(log_to_driver=log_to_driver)],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_worker_output_reaches_the_driver_with_prefixes(tmp_path):
    out = run(tmp_path, True)
    assert out.returncode == 0, out.stderr
    stdout_lines = out.stdout.splitlines()
    pattern = re.compile(r"^\(shout pid=\d+, node=[0-9a-f]{6}\) task line (\d+)$")
    seen = sorted(int(m.group(1)) for line in stdout_lines if (m := pattern.match(line)))
    assert seen == list(range(20)), out.stdout
    assert any(re.match(r"^\(Speaker pid=\d+, node=[0-9a-f]{6}\) actor line$", line) for line in stdout_lines)
    err_lines = [line for line in out.stderr.splitlines() if "task error" in line]
    assert len(err_lines) == 20 and all(line.startswith("(shout pid=") for line in err_lines)
    # every line is whole: nothing printed by one worker is spliced into another's line
    for line in stdout_lines:
        assert line.count("pid=") <= 1, line


def test_log_to_driver_false_keeps_the_driver_quiet(tmp_path):
    out = run(tmp_path, False)
    assert out.returncode == 0, out.stderr
    assert "task line" not in out.stdout and "task error" not in out.stderr
