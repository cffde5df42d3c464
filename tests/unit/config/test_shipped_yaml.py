"""Every shipped pipeline validates and every deploy target loads (presets are tested, not trusted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.config import load_config, load_target

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_validates(path):
    loaded = load_config(path)
    assert loaded.config.name == path.stem
    assert loaded.targets, "a shipped pipeline should validate on a target"


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").glob("*.yaml")), ids=lambda p: p.name)
def test_target_loads(path):
    assert load_target(path).name == path.stem
