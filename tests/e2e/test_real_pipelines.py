"""The shipped real-model pipelines, shrunk to a small subset and one epoch, run end to end on a CPU.

They use the real sources (Fashion-MNIST IDX files, WordNet, the pretrained MiniLM and its tokenizer)
and every stage of the YAML; only data size, epochs and gates are changed, so the run checks the
wiring, not the accuracy (the accuracy is measured on the GPU: docs/results/distill-h100/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _shrunk(name: str, tmp_path: Path, **data: object) -> Path:
    doc = yaml.safe_load((ROOT / "pipelines" / f"{name}.yaml").read_text())
    doc["data"].update(data)
    for entry in doc["stages"]:
        cfg = next(iter(entry.values()))
        if "train" in cfg:
            cfg["train"]["epochs"] = 1
    doc["gates"] = {"accuracy": {"max_drop": 1.0}}  # one epoch on a few hundred examples: wiring, not accuracy
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _run(path: Path, tmp_path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run(
        [sys.executable, "-m", "compress", "run", str(path), "--run-dir", str(tmp_path / "run"),
         "--deploy-dir", str(ROOT / "deploy"), "--quiet"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp_path / "run" / "manifest.json").read_text())


def _check(manifest: dict, tmp_path: Path) -> None:
    kinds = [s["kind"] for s in manifest["stages"]]
    assert kinds == ["finetune", "distill", "export", "validate"]
    teacher = manifest["stages"][0]["metrics"]["model"]
    student = manifest["stages"][1]["metrics"]["model"]
    assert student["params"] < teacher["params"] and student["macs"] < teacher["macs"]
    assert 0.0 <= student["test_macro_accuracy"] <= 1.0
    assert (tmp_path / "run" / "artifacts" / "model.fp32.onnx").is_file()
    assert (tmp_path / "run" / "report.md").is_file()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_resnet_pipeline_on_a_subset(tmp_path):
    m = _run(_shrunk("fashion-resnet", tmp_path, subset=400, batch_size=64, eval_batch_size=256), tmp_path)
    _check(m, tmp_path)
    assert m["stages"][1]["metrics"]["model"]["params"] / m["stages"][0]["metrics"]["model"]["params"] < 0.3


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="apt-get install wordnet-base")
def test_wordnet_minilm_pipeline_on_a_subset(tmp_path):
    m = _run(_shrunk("wordnet-minilm", tmp_path, subset=300, max_length=24, batch_size=32, eval_batch_size=128), tmp_path)
    _check(m, tmp_path)
    assert m["stages"][0]["metrics"]["model"]["params"] > 22_000_000  # the real pretrained MiniLM-L6
