"""The dashboard against a running multi-node cluster: its pages in a real headless Chromium,
its /api/ and Prometheus /metrics with a real HTTP client, its token beyond loopback."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import rayr
from rayr.job_submission import JobSubmissionClient
from rayr.testing import Cluster, wait_node_dead
from rayr.util.metrics import Counter, Histogram
from rayr.util.placement_group import placement_group
from rayr.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
JOB_LINE = "hello from the dashboard job"
WAIT_S = 60


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _until(check: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@rayr.remote(num_cpus=0)
class Greeter:
    def hello(self, who: str) -> str:
        print("greeter says hi to", who, flush=True)
        return f"hi {who}"

    def where(self) -> tuple[str, int]:
        return rayr.get_runtime_context().get_node_id(), os.getpid()


@rayr.remote(max_retries=0)
def explode() -> None:
    raise ValueError("boom-for-the-dashboard")


@rayr.remote
def measured(i: int) -> str:
    node = rayr.get_runtime_context().get_node_id()
    Counter("dash_test_calls", "calls per node", tag_keys=("node",)).inc(tags={"node": node})
    Histogram("dash_test_size", "sizes", boundaries=[5, 50], tag_keys=()).observe(i)
    return node


@rayr.remote
def late_arrival() -> int:
    time.sleep(0.5)
    return 1


@pytest.fixture(scope="module")
def busy_cluster(redis_url: str) -> Iterator[dict[str, Any]]:
    """Three nodes (the third killed), an actor, a failed task, a submitted job, a placement
    group, a stored object and user metrics from tasks on two nodes."""
    c = Cluster(redis_url, include_dashboard=True, job_supervisor=True, node_timeout_s=1.5,
                heartbeat_interval_s=0.3, metrics_report_interval_s=0.2)
    nodes = [c.add_node(num_cpus=2) for _ in range(3)]
    rayr.init(address=redis_url, _cluster_name=c.name)
    try:
        greeter = Greeter.options(
            name="greeter", scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[1], soft=False)).remote()
        assert rayr.get(greeter.hello.remote("the test")) == "hi the test"
        actor_node, actor_pid = rayr.get(greeter.where.remote())
        with pytest.raises(ValueError):
            rayr.get(explode.remote())
        on = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes[:2]]
        placed = [measured.options(scheduling_strategy=on[i % 2]).remote(i) for i in range(20)]
        assert set(rayr.get(placed)) == {nodes[0], nodes[1]}
        pg = placement_group([{"CPU": 1}], strategy="PACK")
        rayr.get(pg.ready())
        big = rayr.put(b"x" * 2_000_000)
        client = JobSubmissionClient(redis_url, cluster_name=c.name)
        submission = client.submit_job(entrypoint=f"{sys.executable} -c 'print(\"{JOB_LINE}\")'")
        assert client.wait_until_finish(submission, timeout_s=WAIT_S).value == "SUCCEEDED"
        client.close()
        c.remove_node(nodes[2], graceful=False)
        wait_node_dead(nodes[2])
        yield {"cluster": c, "nodes": nodes, "url": c._local.dashboard_url, "metrics": c._local.metrics_url,
               "actor": (actor_node, actor_pid), "pg": str(pg.id), "object": big.hex(),
               "submission": submission, "refs": [big, greeter]}
    finally:
        rayr.shutdown()
        c.shutdown()


# ----------------------------------------------------------------------- HTTP
def test_api_answers_on_loopback_without_a_token(busy_cluster):
    url = busy_cluster["url"]
    status, body, _ = _get(url + "/api/overview")
    assert status == 200
    data = json.loads(body)
    states = {n["node_id"]: n["state"] for n in data["nodes"]}
    assert states[busy_cluster["nodes"][2]] == "DEAD" and states[busy_cluster["nodes"][0]] == "ALIVE"
    assert data["actors"]["ALIVE"] >= 1 and data["tasks"]["FAILED"] >= 1
    status, body, _ = _get(url + "/api/logs")
    assert status == 400 and "'node' is required" in json.loads(body)["error"]
    status, body, _ = _get(url + "/api/tasks?limit=many")
    assert status == 400 and "integer" in json.loads(body)["error"]


def _families(url: str) -> dict[str, Any]:
    status, body, headers = _get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _samples(family: Any, name: str | None = None) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in family.samples if name is None or s.name == name]


def test_metrics_count_the_cluster_and_merge_user_metrics_from_two_nodes(busy_cluster):
    nodes = busy_cluster["nodes"]

    def reported() -> dict[str, Any] | None:
        families = _families(busy_cluster["metrics"])
        calls = families.get("ray_dash_test_calls")
        if calls is None or sum(v for _, v in _samples(calls, "ray_dash_test_calls_total")) < 20:
            return None
        return families

    families = _until(reported, "the user metrics of 20 tasks to reach /metrics")
    calls = {labels["node"]: v for labels, v in _samples(families["ray_dash_test_calls"],
                                                         "ray_dash_test_calls_total")}
    assert calls == {nodes[0]: 10.0, nodes[1]: 10.0}
    sizes = families["ray_dash_test_size"]
    buckets = {labels["le"]: v for labels, v in _samples(sizes, "ray_dash_test_size_bucket")}
    assert buckets == {"5.0": 6.0, "50.0": 20.0, "+Inf": 20.0}  # i in 0..19
    assert _samples(sizes, "ray_dash_test_size_sum") == [({}, float(sum(range(20))))]
    node_states = dict((labels["state"], v) for labels, v in _samples(families["rayr_nodes"]))
    assert node_states == {"ALIVE": 2.0, "DEAD": 1.0}
    tasks = dict((labels["state"], v) for labels, v in _samples(families["rayr_tasks"]))
    assert tasks["FINISHED"] >= 20 and tasks["FAILED"] >= 1
    actors = dict((labels["state"], v) for labels, v in _samples(families["rayr_actors"]))
    assert actors["ALIVE"] >= 1
    cpus = {labels["node_id"]: v for labels, v in _samples(families["rayr_node_resources_total"])
            if labels["resource"] == "CPU"}
    assert cpus == {nodes[0]: 2.0, nodes[1]: 2.0}  # live nodes only
    stored = {labels["node_id"]: v for labels, v in _samples(families["rayr_object_store_used_bytes"])}
    assert sum(stored.values()) >= 2_000_000
    assert _samples(families["rayr_redis_used_memory_bytes"])[0][1] > 0


def test_a_token_is_required_beyond_loopback(redis_url):
    c = Cluster(redis_url, include_dashboard=True, dashboard_host="0.0.0.0", metrics_export_port=0)
    try:
        c.add_node(num_cpus=1)
        local = c._local
        token_file = local.dashboard_token_file
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token = Path(token_file).read_text()
        assert token and token == local.settings.dashboard_token
        assert local.dashboard_proc is not None
        assert token not in " ".join(psutil.Process(local.dashboard_proc.pid).cmdline())
        for url in (local.dashboard_url + "/api/version", local.metrics_url, local.dashboard_url + "/"):
            status, body, _ = _until(lambda u=url: _get(u), "the dashboard to listen")
            assert status == 401 and b"token" in body, url
            assert _get(url, {"Authorization": "Bearer wrong"})[0] == 401
            assert _get(url, {"Authorization": f"Bearer {token}"})[0] == 200
        # a browser opens the link with the token once; a cookie keeps it
        status, _, headers = _get(local.dashboard_url + f"/api/version?token={token}")
        assert status == 303 and headers["Location"].endswith("/api/version")
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert _get(local.dashboard_url + "/api/version", {"Cookie": cookie})[0] == 200
        # the metrics-only port serves nothing else
        assert _get(local.metrics_url.replace("/metrics", "/api/version"),
                    {"Authorization": f"Bearer {token}"})[0] == 404
    finally:
        c.shutdown()


# -------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("no Chromium and chromedriver on PATH: .ci/run installs Debian's chromium and "
                    "chromium-driver with apt where it can")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, url: str, element: str, text: str) -> str:
    """Open ``url`` and wait until element ``element`` shows ``text``; its whole text."""
    driver.get(url)

    def shown() -> str | None:
        got = _text(driver, element)
        return got if text in got else None

    return _until(shown, f"{text!r} in #{element} of {url}")


def _text(driver: Any, element: str) -> str:
    """The element's text now ("" while it is being re-rendered: pages redraw every 2 s)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return str(driver.find_element("id", element).text)
    except WebDriverException:
        return ""


def _shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_pages_show_what_a_user_must_see(busy_cluster, browser):
    url, nodes = busy_cluster["url"], busy_cluster["nodes"]
    dead = nodes[2][:12]
    table = _open(browser, url + "/#/", "nodes-table", dead)
    row = next(line for line in table.splitlines() if dead in line)
    assert "DEAD" in row
    failures = _open(browser, url + "/#/", "failed-tasks", "boom-for-the-dashboard")
    assert "ValueError" in failures
    _shot(browser, "cluster")

    actor_node, actor_pid = busy_cluster["actor"]
    actors = _open(browser, url + "/#/actors", "actors-table", "Greeter")
    row = next(line for line in actors.splitlines() if "Greeter" in line)
    assert "ALIVE" in row and actor_node[:12] in row and str(actor_pid) in row and "greeter" in row
    _shot(browser, "actors")

    tasks = _open(browser, url + "/#/tasks", "tasks-table", "boom-for-the-dashboard")
    assert "explode" in tasks and "measured" in tasks
    _open(browser, url + "/#/tasks", "timeline", "pid")
    _shot(browser, "tasks")

    sid = busy_cluster["submission"]
    _open(browser, url + "/#/jobs", "jobs-table", sid)
    _open(browser, url + f"/#/jobs?logs={sid}", "job-logs", JOB_LINE)
    _shot(browser, "jobs")

    _open(browser, url + "/#/objects", "objects-table", busy_cluster["object"])
    _open(browser, url + "/#/objects", "stores-table", nodes[0][:12])
    _shot(browser, "objects")

    pgs = _open(browser, url + "/#/placement-groups", "pgs-table", busy_cluster["pg"][:12])
    assert "CREATED" in pgs
    _shot(browser, "placement-groups")

    actor_log = url + f"/#/logs?node={actor_node}&pid={actor_pid}"
    _open(browser, actor_log, "log-text", "greeter says hi to the test")
    _shot(browser, "logs")


def test_pages_follow_the_cluster_without_a_reload(busy_cluster, browser):
    url = busy_cluster["url"]
    _open(browser, url + "/#/tasks", "tasks-table", "explode")
    browser.execute_script("window.__still_this_page = 42;")
    assert "late_arrival" not in _text(browser, "tasks-table")
    assert rayr.get(late_arrival.remote()) == 1

    def finished() -> bool:
        text = _text(browser, "tasks-table")
        return any("late_arrival" in line and "FINISHED" in line for line in text.splitlines())

    _until(finished, "the finished task to appear on the open page")
    assert browser.execute_script("return window.__still_this_page;") == 42  # no reload happened
    _shot(browser, "tasks-live")

    # a log followed live: a new line the actor prints shows up in the open log view
    actor_node, actor_pid = busy_cluster["actor"]
    _open(browser, url + f"/#/logs?node={actor_node}&pid={actor_pid}", "log-text", "greeter says hi")
    greeter = rayr.get_actor("greeter")
    rayr.get(greeter.hello.remote("a later caller"))
    _until(lambda: "a later caller" in _text(browser, "log-text"),
           "the actor's new log line on the open log page")
