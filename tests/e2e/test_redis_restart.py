"""Redis with an append-only file restarted mid-workload: the cluster reconnects, work completes."""

from __future__ import annotations

import shlex
import sys
import time

import pytest

import rayr
from rayr import procs
from rayr.job_submission import JobStatus, JobSubmissionClient
from rayr.node import free_port, start_redis
from rayr.testing import Cluster


@pytest.fixture
def persistent_redis(tmp_path):
    port = free_port()
    holder = {"proc": start_redis(port, workdir=str(tmp_path), persist=True)}

    def restart(down_s: float) -> None:
        procs.stop([holder["proc"]])  # SIGTERM: Redis flushes its append-only file and exits
        time.sleep(down_s)
        holder["proc"] = start_redis(port, workdir=str(tmp_path), persist=True)

    yield f"redis://127.0.0.1:{port}", restart
    procs.stop([holder["proc"]])


@rayr.remote(max_retries=3)
def slow_square(i):
    time.sleep(0.01)
    return i * i


def test_work_completes_across_a_redis_restart(persistent_redis):
    url, restart = persistent_redis
    # down for longer than the node timeout: nodes must not be declared dead for it
    cluster = Cluster(url, node_timeout_s=1.5, heartbeat_interval_s=0.3)
    try:
        cluster.add_node(num_cpus=2)
        cluster.add_node(num_cpus=1)
        rayr.init(address=url, _cluster_name=cluster.name)

        @rayr.remote
        class Tally:
            def __init__(self):
                self.n = 0

            def add(self, k):
                self.n += k
                return self.n

        tally = Tally.remote()
        assert rayr.get(tally.add.remote(1)) == 1
        refs = [slow_square.remote(i) for i in range(400)]
        time.sleep(0.5)
        restart(2.5)
        assert rayr.get(refs, timeout=90) == [i * i for i in range(400)]
        # everything keeps working afterwards: new tasks, the same actor, puts
        assert rayr.get([slow_square.remote(i) for i in range(20)], timeout=30) == [i * i for i in range(20)]
        assert rayr.get(tally.add.remote(2), timeout=30) == 3
        assert rayr.get(rayr.put("still here"), timeout=10) == "still here"
        assert sum(1 for n in rayr.nodes() if n["Alive"]) == 2
    finally:
        rayr.shutdown()
        cluster.shutdown()


def test_submitted_jobs_survive_a_redis_restart(persistent_redis):
    """The job supervisor waits out a Redis restart: a job running across it ends SUCCEEDED
    with its output, and the supervisor takes new submissions afterwards (it used to exit on
    the first unanswered command, killing every running job with it)."""
    url, restart = persistent_redis
    cluster = Cluster(url, job_supervisor=True, node_timeout_s=1.5, heartbeat_interval_s=0.3)
    client = None
    try:
        cluster.add_node(num_cpus=1)
        client = JobSubmissionClient(url, cluster_name=cluster.name)
        python = shlex.quote(sys.executable)
        across = client.submit_job(entrypoint=f"{python} -c \"import time; print('started', flush=True); "
                                              "time.sleep(5); print('survived')\"")
        _wait_running(client, across)
        restart(2.5)
        after = client.submit_job(entrypoint=f"{python} -c \"print('after the restart')\"")
        status = client.wait_until_finish(across, timeout_s=120)
        assert status == JobStatus.SUCCEEDED, (status, client.get_job_logs(across))
        assert "survived" in client.get_job_logs(across)
        assert client.wait_until_finish(after, timeout_s=120) == JobStatus.SUCCEEDED
        assert "after the restart" in client.get_job_logs(after)
    finally:
        if client is not None:
            client.close()
        cluster.shutdown()


def _wait_running(client: JobSubmissionClient, sid: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(sid)) != JobStatus.RUNNING:
        assert time.monotonic() < deadline, f"job {sid} is {status}, not RUNNING"
        time.sleep(0.1)
