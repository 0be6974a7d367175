"""Every YAML file in configs/ loads and validates: settings files as Settings, cluster
files (those with a `provider`) as cluster configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayr.autoscaler.config import load_cluster_config
from rayr.config import Settings, load_settings

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path, monkeypatch):
    if "provider" in yaml.safe_load(path.read_text()):
        assert load_cluster_config(path).cluster_name
        return
    for name in Settings.model_fields:
        monkeypatch.delenv(f"RAYR_{name.upper()}", raising=False)
    settings = load_settings(yaml_path=str(path))
    if path.name == "default.yaml":
        assert settings == Settings()
