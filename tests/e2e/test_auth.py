"""A head listening beyond loopback requires a password, and bad passwords fail clearly."""

from __future__ import annotations

import functools
import json
import os
import stat

import pytest

import rayr
from rayr import testing
from rayr.node import free_port

run_cli = functools.partial(testing.run_cli, check=False)  # the tests look at failures


@pytest.fixture
def open_head(sessions):
    temp_dir, env = sessions
    port = free_port()
    out = run_cli("start", "--head", "--bind", "0.0.0.0", "--port", str(port), "--num-cpus", "1", env=env)
    try:
        assert out.returncode == 0, out.stderr
        # generated, kept in the session file (0600), never printed
        with open(os.path.join(temp_dir, "rayr_current_cluster")) as f:
            password = json.load(f)["password"]
        assert password and password not in out.stdout + out.stderr
        assert "rayr_current_cluster" in out.stdout, "it must say where the password is"
        yield port, password, temp_dir, env
    finally:
        run_cli("stop", env=env)


def test_generated_password_is_required_and_kept_private(open_head, tmp_path):
    port, password, temp_dir, env = open_head
    session = os.path.join(temp_dir, "rayr_current_cluster")
    assert stat.S_IMODE(os.stat(session).st_mode) == 0o600
    with open(session) as f:
        assert password in f.read()
    address = f"127.0.0.1:{port}"
    elsewhere = str(tmp_path / "no-session-file")  # as another user (or host) sees it
    with pytest.raises(ConnectionError, match="requires a Redis password"):
        rayr.init(address=address, _temp_dir=elsewhere)
    with pytest.raises(ConnectionError, match="refused the Redis password"):
        rayr.init(address=address, _redis_password="not-it")
    assert not rayr.is_initialized()
    rayr.init(address=address)  # this user on this host: the session file has the password
    rayr.shutdown()
    rayr.init(address="auto")  # the session file carries the password
    try:
        assert rayr.get(rayr.remote(lambda: 5).remote()) == 5
    finally:
        rayr.shutdown()
    rayr.init(address=address, _redis_password=password)
    rayr.shutdown()


def test_node_with_a_wrong_password_fails_fast(open_head, tmp_path):
    port, _password, _temp_dir, env = open_head
    out = run_cli("start", "--address", f"127.0.0.1:{port}", "--redis-password", "bad", env=env)
    assert out.returncode != 0 and "refused the Redis password given" in out.stderr
    out = run_cli("start", "--address", f"127.0.0.1:{port}", env={**env, "RAYR_REDIS_PASSWORD": "bad"})
    assert out.returncode != 0 and "refused the Redis password given" in out.stderr
    # without the session file that records the head, as on another host
    out = run_cli("start", "--address", f"127.0.0.1:{port}", env={**env, "RAYR_TEMP_DIR": str(tmp_path)})
    assert out.returncode != 0 and "requires a Redis password: set RAYR_REDIS_PASSWORD" in out.stderr
