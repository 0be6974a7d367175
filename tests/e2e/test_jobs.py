"""Job submission end to end: the Python client on a test cluster, and the CLI on a 2-node
cluster started with `rayr start`, running examples/job_app (own module + a pip package)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time

import psutil
import pytest

from rayr import testing
from rayr.job_submission import JobStatus, JobSubmissionClient
from rayr.node import free_port
from rayr.testing import Cluster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = """
import os, rayr
from helper_job_mod import GREETING
rayr.init()

@rayr.remote
def where():
    import helper_job_mod
    return helper_job_mod.GREETING, os.environ["JOB_VAR"], rayr.get_runtime_context().get_node_id()

print(GREETING, os.environ["JOB_VAR"], "namespace=" + rayr.get_runtime_context().namespace)
print(sorted({node for _, _, node in rayr.get([where.options(scheduling_strategy="SPREAD").remote()
                                              for _ in range(4)])}))
"""


@pytest.fixture(scope="module")
def job_cluster(redis_url):
    c = Cluster(redis_url, job_supervisor=True)
    nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    client = JobSubmissionClient(redis_url, cluster_name=c.name)
    yield c, client, nodes
    client.close()
    c.shutdown()


def test_job_runs_with_its_working_dir_on_every_node(job_cluster, tmp_path):
    _, client, nodes = job_cluster
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text(APP)
    (app / "helper_job_mod.py").write_text("GREETING = 'hello-job'\n")
    sid = client.submit_job(entrypoint="python main.py",
                            runtime_env={"working_dir": str(app), "env_vars": {"JOB_VAR": "v1"}},
                            metadata={"owner": "tests"})
    final = client.wait_until_finish(sid, timeout_s=90)
    assert final == JobStatus.SUCCEEDED, client.get_job_info(sid).message
    logs = client.get_job_logs(sid)
    assert "hello-job v1 namespace=" in logs
    assert str(sorted(nodes)) in logs  # its tasks, on both nodes, found the job's module
    info = client.get_job_info(sid)
    assert info.driver_exit_code == 0 and info.job_id and info.metadata == {"owner": "tests"}
    assert info.end_time >= info.start_time
    assert sid in [j.submission_id for j in client.list_jobs()]
    # a second job gets a namespace of its own
    again = client.submit_job(entrypoint="python main.py",
                              runtime_env={"working_dir": str(app), "env_vars": {"JOB_VAR": "v2"}})
    assert client.wait_until_finish(again, timeout_s=90) == JobStatus.SUCCEEDED
    namespaces = [line.split("namespace=")[1] for s in (sid, again)
                  for line in client.get_job_logs(s).splitlines() if "namespace=" in line]
    assert len(set(namespaces)) == 2


def test_crashing_driver_fails_with_exit_code_and_last_lines(job_cluster):
    _, client, _ = job_cluster
    entry = f"{sys.executable} -c \"print('step one'); print('about to crash'); raise SystemExit(7)\""
    sid = client.submit_job(entrypoint=entry)
    assert client.wait_until_finish(sid, timeout_s=60) == JobStatus.FAILED
    info = client.get_job_info(sid)
    assert info.driver_exit_code == 7
    assert "exit code 7" in info.message and "about to crash" in info.message
    assert "step one\nabout to crash" in client.get_job_logs(sid)


def test_stop_a_running_job_and_a_finished_one(job_cluster):
    _, client, _ = job_cluster
    entry = "python -c \"import time; print('started', flush=True); time.sleep(120)\""
    sid = client.submit_job(entrypoint=entry, submission_id="stop-me")
    with pytest.raises(ValueError, match="'stop-me' already exists"):
        client.submit_job(entrypoint="true", submission_id="stop-me")

    async def first_chunk():
        async for chunk in client.tail_job_logs(sid):
            return chunk

    assert "started" in asyncio.run(asyncio.wait_for(first_chunk(), 60))
    assert client.get_job_status(sid) == JobStatus.RUNNING
    pid = client.get_job_info(sid).driver_pid
    assert client.stop_job(sid) is True
    assert client.wait_until_finish(sid, timeout_s=30) == JobStatus.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert client.stop_job(sid) is False  # already over
    assert "started" in client.get_job_logs(sid)  # logs outlive the job
    with pytest.raises(ValueError, match="No job with submission id 'nope'"):
        client.get_job_status("nope")


# relative --working-dir paths in these commands are the repository's
run_cli = functools.partial(testing.run_cli, timeout=150, cwd=REPO)


def test_cli_job_lifecycle_on_a_two_node_cluster(sessions):
    _temp_dir, env = sessions
    port = free_port()
    try:
        run_cli("start", "--head", "--port", str(port), "--num-cpus", "1", env=env)
        run_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", env=env)
        # the check: own module + a pip package it declares, on both nodes
        done = run_cli("job", "submit", "--submission-id", "app1", "--working-dir", "examples/job_app",
                       "--", "python", "main.py", env=env)
        assert "Job 'app1' submitted successfully" in done.stdout
        assert "8 values, total 140" in done.stdout and "nodes used: 2" in done.stdout
        assert "Job 'app1' succeeded" in done.stdout
        assert "Status for job 'app1': SUCCEEDED" in run_cli("job", "status", "app1", env=env).stdout
        assert "nodes used: 2" in run_cli("job", "logs", "app1", env=env).stdout
        stopped = run_cli("job", "stop", "app1", env=env).stdout
        assert "already finished (SUCCEEDED)" in stopped

        failed = run_cli("job", "submit", "--", "python", "-c", "import sys; print('bye'); sys.exit(3)",
                         env=env, check=False)
        assert failed.returncode == 1 and "failed" in failed.stdout and "exit code 3" in failed.stderr

        run_cli("job", "submit", "--no-wait", "--submission-id", "sleeper", "--runtime-env-json",
                '{"env_vars": {"NAP": "60"}}', "--",
                "python -c 'import os, time; print(\"napping\", flush=True); "
                "time.sleep(int(os.environ[\"NAP\"]))'", env=env)
        deadline = time.time() + 30
        while "RUNNING" not in run_cli("job", "status", "sleeper", env=env).stdout:
            assert time.time() < deadline
            time.sleep(0.2)
        status = run_cli("status", env=env).stdout
        assert "sleeper" in status and "RUNNING" in status
        listed = json.loads(run_cli("list", "jobs", "--format", "json", env=env).stdout)
        assert {r["submission_id"]: r["status"] for r in listed if r["submission_id"]} == {
            "app1": "SUCCEEDED", "sleeper": "RUNNING", **{r["submission_id"]: "FAILED" for r in listed
                                                         if r["status"] == "FAILED"}}
        assert "Job 'sleeper' is STOPPED" in run_cli("job", "stop", "sleeper", env=env).stdout
        assert "napping" in run_cli("job", "logs", "sleeper", env=env).stdout
        assert "sleeper" in run_cli("job", "list", env=env).stdout

        bad = run_cli("job", "submit", "--runtime-env-json", '{"conda": "x"}', "--", "true",
                      env=env, check=False)
        assert bad.returncode != 0 and "'conda'" in bad.stderr
    finally:
        stopped = run_cli("stop", env=env)
    assert "Stopped 6" in stopped.stdout  # redis, monitor, dashboard, job supervisor, two raylets
