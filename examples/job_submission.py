"""Job submission: start a cluster, submit a driver script to it, follow it, stop the cluster.

In a shell this is::

    rayr start --head --num-cpus 2
    rayr job submit --working-dir examples/hello_job -- python main.py
    rayr stop

Here the same steps run from Python, with ``JobSubmissionClient`` for the job.

    python examples/job_submission.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

from rayr.job_submission import JobStatus, JobSubmissionClient

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello_job")


def rayr_cli(*args: str) -> str:
    """Run the ``rayr`` command (``python -m rayr.cli.main`` is the same program)."""
    done = subprocess.run([sys.executable, "-m", "rayr.cli.main", *args], capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
        raise RuntimeError(f"rayr {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    # a sessions directory of our own, so this example neither joins nor stops a cluster you
    # already run: `rayr start`, `rayr stop` and the client below all look there
    temp_dir = tempfile.mkdtemp(prefix="rayr-job-example-")
    os.environ["RAYR_TEMP_DIR"] = temp_dir
    port = free_port()
    rayr_cli("start", "--head", f"--port={port}", "--num-cpus=2")
    print("cluster started")
    try:
        # on the head's host the Redis password comes from the session file; elsewhere set
        # RAYR_REDIS_PASSWORD
        client = JobSubmissionClient(f"127.0.0.1:{port}")
        submission_id = client.submit_job(
            entrypoint="python main.py",
            runtime_env={"working_dir": APP, "env_vars": {"GREETING": "hello"}},
            metadata={"example": "job_submission"},
        )
        print("submitted:", submission_id)
        status = client.wait_until_finish(submission_id, timeout_s=60)
        print("job status:", status.value)
        print("job output:", client.get_job_logs(submission_id).strip())
        if status != JobStatus.SUCCEEDED:
            print("why:", client.get_job_info(submission_id).message)
        client.close()
    finally:
        print(rayr_cli("stop").strip())  # stops exactly the processes `rayr start` recorded
        shutil.rmtree(temp_dir, ignore_errors=True)
    sys.exit(0 if status == JobStatus.SUCCEEDED else 1)


if __name__ == "__main__":
    main()
