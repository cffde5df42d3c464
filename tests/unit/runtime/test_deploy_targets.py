"""Each shipped deploy target is a valid TargetConfig naming a registered runtime; cpu-ort as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.config.api import load_target
from compress.runtime import RUNTIMES

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
TARGET_FILES = sorted(DEPLOY.glob("*.yaml"))


def test_cpu_ort_is_shipped() -> None:
    assert [p.stem for p in TARGET_FILES].count("cpu-ort") == 1


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_target_file_is_valid(path: Path) -> None:
    target = load_target(path)  # the loader checks name == stem and that the runtime is registered
    assert target.name == path.stem
    assert target.runtime in RUNTIMES


def test_cpu_ort_target() -> None:
    target = load_target(DEPLOY / "cpu-ort.yaml")
    assert target.model_dump() == {
        "name": "cpu-ort",
        "description": "x86 CPU, ONNX Runtime, 2 threads, INT8 with unsigned activations",
        "device": "cpu",
        "gpu": None,
        "runtime": "onnxruntime",
        "precision": "int8",
        "artifact": "onnx-int8-u8",
        "threads": 2,
        "batch_sizes": [1, 32],
        "sequence_length": 64,
        "warmup": 20,
        "iterations": 200,
        "repeats": 1,
    }
