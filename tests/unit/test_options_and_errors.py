from __future__ import annotations

import pickle

import pytest

from rayr.config import ConfigError, load_settings
from rayr.exceptions import GetTimeoutError, RayTaskError
from rayr.gcs.client import normalize_address
from rayr.ids import JobID, ObjectID, TaskID
from rayr.remote_function import validate_task_options


def test_default_task_options():
    opts = validate_task_options({})
    assert opts.resources == {"CPU": 1.0}
    assert opts.shape == "CPU=1"
    assert opts.num_returns == 1 and opts.max_retries == 3 and opts.retry_exceptions is False


def test_resource_options_build_the_shape():
    opts = validate_task_options({"num_cpus": 0, "num_gpus": 1, "resources": {"x": 2}})
    assert opts.resources == {"GPU": 1.0, "x": 2.0}
    assert opts.shape == "GPU=1,x=2"


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"num_cpu": 1}, "Valid options"),
        ({"num_cpus": "two"}, "num_cpus"),
        ({"num_returns": -1}, "num_returns"),
        ({"resources": {"GPU": 1}}, "num_gpus"),
        ({"resources": {"a,b": 1}}, "resource names"),
        ({"retry_exceptions": [1]}, "retry_exceptions"),
    ],
)
def test_bad_options(options, needle):
    with pytest.raises(ValueError, match=needle):
        validate_task_options(options)


def test_task_error_dual_class_and_pickling():
    cause = KeyError("k")
    err = RayTaskError("f", "Traceback...\nKeyError: 'k'", cause, 12, "ab" * 8)
    dual = pickle.loads(pickle.dumps(err)).as_instanceof_cause()
    assert isinstance(dual, KeyError) and isinstance(dual, RayTaskError)
    assert "Traceback" in str(dual) and "pid=12" in str(dual)
    assert type(dual).__name__ == "RayTaskError(KeyError)"
    assert type(dual) is type(err.as_instanceof_cause())  # classes are cached


def test_get_timeout_error_is_a_timeout_error():
    assert issubclass(GetTimeoutError, TimeoutError)


def test_ids():
    job = JobID.from_int(7)
    task = TaskID.for_job(job)
    assert task.job_id() == job
    oid = ObjectID.for_return(task, 2)
    assert oid.task_id() == task and oid.index() == 2
    assert len(oid.binary()) == 20
    with pytest.raises(ValueError, match="20 bytes"):
        ObjectID(b"short")


def test_normalize_address():
    assert normalize_address("127.0.0.1:6379") == "redis://127.0.0.1:6379"
    assert normalize_address("redis://h:1") == "redis://h:1"
    with pytest.raises(ValueError, match="scheme"):
        normalize_address("http://h:1")
    with pytest.raises(ValueError, match="port"):
        normalize_address("host")


def test_settings_priority_and_errors(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("inline_threshold: 10\nheartbeat_interval_s: 2\n")
    monkeypatch.setenv("RAYR_HEARTBEAT_INTERVAL_S", "3")
    s = load_settings({"inline_threshold": 20}, yaml_path=str(cfg))
    assert s.inline_threshold == 20 and s.heartbeat_interval_s == 3.0
    monkeypatch.setenv("RAYR_NODE_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match=r"(?s)environment.*node_timeout_s"):
        load_settings()
    monkeypatch.delenv("RAYR_NODE_TIMEOUT_S")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inline_treshold: 5\n")
    with pytest.raises(ConfigError, match="inline_treshold"):
        load_settings(yaml_path=str(bad))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_resource_amounts_are_refused(value):
    from rayr.actor import validate_actor_options
    from rayr.node import default_resources
    from rayr.placement_group import _check_bundles

    for options in ({"num_cpus": value}, {"num_gpus": value}, {"memory": value},
                    {"resources": {"custom": value}}):
        with pytest.raises(ValueError, match="finite number"):
            validate_task_options(options)
        with pytest.raises(ValueError, match="finite number"):
            validate_actor_options(options, is_async=False)
    with pytest.raises(ValueError, match="finite number"):
        _check_bundles([{"CPU": value}])
    for kwargs in ({"num_cpus": value}, {"num_gpus": value}, {"resources": {"custom": value}}):
        with pytest.raises(ValueError, match="finite number"):
            default_resources(**kwargs)
