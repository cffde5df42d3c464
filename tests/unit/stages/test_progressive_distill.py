"""ERNIE-Tiny-style progressive distillation through ``compress run``: each distill stage may bring its
own teacher (a model source with a checkpoint) and its own data; mismatched stage data is bad input."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from compress.cli.main import app
from compress.models import build_model

TEACHER = {"dim": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64}


def other_shape_data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A data factory with 4x4 images (the pipeline's digits are 8x8)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 10


def _yaml(tmp_path: Path, stage1_data: str) -> Path:
    torch.manual_seed(3)
    general = build_model("tiny-vit", TEACHER)  # stands for the pre-trained, not fine-tuned teacher
    torch.save(general.state_dict(), tmp_path / "general.pt")
    f = tmp_path / "p.yaml"
    f.write_text(
        f"""\
name: t
seed: 1
teacher: {{family: tiny-vit, config: {json.dumps(TEACHER)}}}
student: {{keep_layers: [0]}}
data: {{source: digits, batch_size: 128}}
stages:
  - finetune: {{train: {{epochs: 1}}}}
  - distill:
      teacher: {{family: tiny-vit, config: {json.dumps(TEACHER)}, checkpoint: general.pt}}
      data: {stage1_data}
      losses: {{kd: {{weight: 1.0}}, ce: null, hidden: {{weight: 1.0}}}}
      train: {{epochs: 1}}
  - distill:
      teacher: original
      losses: {{kd: {{weight: 0.9}}, ce: {{weight: 0.1}}}}
      train: {{epochs: 1}}
"""
    )
    return f


def test_each_stage_has_its_own_teacher_and_data(tmp_path):
    f = _yaml(tmp_path, "{source: digits, subset: 500, batch_size: 128}")
    r = CliRunner().invoke(app, ["run", str(f), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    s1, s2 = m["stages"][1]["metrics"], m["stages"][2]["metrics"]
    assert s1["teacher"] == "tiny-vit model" and s2["teacher"] == "original"
    # stage 1 trained on its own 500-example subset, stage 2 on the pipeline's full data
    assert s1["data"]["train_examples"] < 400 < s2["data"]["train_examples"]
    assert (tmp_path / "run" / "stages" / "02-distill" / "splits.json").is_file()
    assert s1["losses"]["terms"] == ["kd", "hidden"]


def test_stage_data_of_another_shape_is_bad_input(tmp_path):
    f = _yaml(tmp_path, f"{{source: factory, factory: '{__name__}:other_shape_data'}}")
    r = CliRunner().invoke(app, ["run", str(f), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 2, r.output
    assert "stages[1].distill.data: inputs of shape (1, 4, 4)" in r.output
    assert "do not match the pipeline data's (1, 8, 8)" in r.output
    assert "Traceback" not in r.output


def test_a_stage_teacher_that_does_not_fit_names_its_yaml_path(tmp_path):
    f = _yaml(tmp_path, "{source: digits, subset: 500}")
    f.write_text(f.read_text().replace("checkpoint: general.pt", "checkpoint: missing.pt"))
    r = CliRunner().invoke(app, ["run", str(f), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 2, r.output
    assert "stages[1].distill.teacher.checkpoint" in r.output and "missing.pt" in r.output
