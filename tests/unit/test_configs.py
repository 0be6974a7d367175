"""Every YAML file in configs/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayr.config import Settings, load_settings

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"RAYR_{name.upper()}", raising=False)
    settings = load_settings(yaml_path=str(path))
    if path.name == "default.yaml":
        assert settings == Settings()
