"""The Redis password reaches child processes through the environment, never their command line."""

from __future__ import annotations

from rayr.config import REDIS_PASSWORD_ENV, Settings, child_env, child_settings, load_settings


def test_the_password_is_left_out_of_the_settings_json_and_repr():
    settings = Settings(redis_password="s3cret", cluster_name="c")
    assert "s3cret" not in settings.model_dump_json()
    assert "s3cret" not in repr(settings)
    assert settings.model_copy(update={"inline_threshold": 1}).redis_password == "s3cret"


def test_a_child_reads_the_json_plus_the_password_from_its_environment(monkeypatch):
    settings = Settings(redis_password="s3cret", cluster_name="c")
    env = child_env(settings.redis_password, base={"PATH": "/bin", REDIS_PASSWORD_ENV: "stale"})
    assert env == {"PATH": "/bin", REDIS_PASSWORD_ENV: "s3cret"}
    assert REDIS_PASSWORD_ENV not in child_env(None, base=env)  # no password: none inherited
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "s3cret")
    child = child_settings(settings.model_dump_json())
    assert child.redis_password == "s3cret" and child.cluster_name == "c"


def test_generating_a_password_can_be_turned_off_from_the_environment(monkeypatch):
    assert load_settings().generate_redis_password
    monkeypatch.setenv("RAYR_GENERATE_REDIS_PASSWORD", "0")
    assert not load_settings().generate_redis_password


def test_the_session_files_password_goes_only_to_the_cluster_it_records(tmp_path):
    import json

    from rayr.session import recorded_password, session_file_path

    settings = Settings(temp_dir=str(tmp_path))
    with open(session_file_path(settings), "w") as f:
        json.dump({"address": "redis://127.0.0.1:7001", "password": "s3cret", "session_dir": ""}, f)
    assert recorded_password(settings, "redis://127.0.0.1:7001") == "s3cret"
    assert recorded_password(settings, "redis://localhost:7001") == "s3cret"
    assert recorded_password(settings, "redis://127.0.0.1:7002") is None
    assert recorded_password(settings, "redis://192.0.2.1:7001") is None  # another host (TEST-NET)
