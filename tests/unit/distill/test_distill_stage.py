"""The distill stage with feature losses: progressive stages with their own teacher and losses, and
bad loss settings through ``compress run`` as exit 2 with the YAML path and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli.main import app
from compress.distill import DistillObjective
from compress.models import build_model
from compress.stages.distill import DistillStage, DistillStageConfig
from tests._helpers.models import digits, stage_context, tiny_vit

BASE = """\
name: t
seed: 1
teacher: {family: tiny-vit, config: TEACHER, checkpoint: CKPT}
student: {keep_layers: [KEEP]}
data: {source: digits, batch_size: 256}
stages:
  - distill: {train: {epochs: 1, lr: 0.005}, losses: LOSSES}
"""
TEACHER = {"dim": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64}
UNEQUAL_HEADS = {  # a student keeping block 0 has 2 heads in its last layer, the teacher 4 in its last
    "dim": 32,
    "blocks": [
        {"num_heads": 2, "head_dim": 16, "mlp_dim": 64},
        {"num_heads": 4, "head_dim": 8, "mlp_dim": 64},
    ],
}


def _pipeline(tmp_path: Path, losses: str, teacher: dict = TEACHER, keep: int = 1) -> Path:
    """A pipeline with one distill stage from a saved teacher (so no finetune stage is needed)."""
    ck = tmp_path / "teacher.pt"
    torch.save(build_model("tiny-vit", teacher).state_dict(), ck)
    p = tmp_path / "p.yaml"
    p.write_text(
        BASE.replace("TEACHER", json.dumps(teacher))
        .replace("CKPT", str(ck))
        .replace("LOSSES", losses)
        .replace("KEEP", str(keep))
    )
    return p


@pytest.mark.parametrize(
    ("losses", "teacher", "expect"),
    [
        (
            '{hidden: {student_layers: "net.layer*"}}',
            TEACHER,
            ["stages[0].distill.losses.hidden.student_layers: the student (TinyViT): no module matches 'net.layer*'",
             "blocks.0", "write a glob that matches"],
        ),
        (
            "{hidden: {layer_map: [[1, 1], [2, 2]]}}",
            TEACHER,
            ["stages[0].distill.losses.hidden.layer_map: pair(s) [[2, 2]] out of range: the student has hidden "
             "states 0..1 (0 = embedding output), the teacher 0..2"],
        ),
        (
            "{minilm: {}}",
            UNEQUAL_HEADS,
            ["stages[0].distill.losses.minilm: the student's last layer has 2 attention heads and the teacher's 4",
             "use losses.minilmv2 (relation heads) instead"],
        ),
        (
            "{minilmv2: {relation_heads: 3}}",
            TEACHER,
            ["stages[0].distill.losses.minilmv2.relation_heads: 3 relation heads must divide both attention widths"],
        ),
    ],
    ids=["glob-matches-nothing", "layer-map-out-of-range", "minilm-unequal-heads", "relation-heads"],
)  # fmt: skip
def test_bad_feature_losses_exit_2_without_traceback(tmp_path, losses, teacher, expect):
    p = _pipeline(tmp_path, losses, teacher, keep=0 if teacher is UNEQUAL_HEADS else 1)
    r = CliRunner().invoke(app, ["run", str(p), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    for frag in expect:
        assert frag in r.stderr, f"{frag!r} not in:\n{r.stderr}"


def test_feature_losses_run_through_the_cli(tmp_path):
    losses = "{hidden: {weight: 1}, attention_scores: {}, minilmv2: {relation_heads: 8}, dkd: {warmup: 1}}"
    rd = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", str(_pipeline(tmp_path, losses)), "--run-dir", str(rd), "--quiet"])
    assert r.exit_code in (0, 1), r.output  # 1 = a release gate, not our concern here
    m = json.loads((rd / "manifest.json").read_text())
    got = m["stages"][0]["metrics"]
    assert got["losses"]["hidden_pairs"] == [[0, 0], [1, 2]]
    assert got["losses"]["attention_score_pairs"] == [[1, 2]]
    assert {"kd", "ce", "dkd", "hidden", "attention_scores", "minilmv2"} <= set(got["history"][0])


def test_progressive_stages_choose_their_own_teacher_and_losses(tmp_path, monkeypatch):
    data = digits(tmp_path)
    teacher = tiny_vit(depth=4)
    seen: list[DistillObjective] = []
    real_init = DistillObjective.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen.append(self)

    monkeypatch.setattr(DistillObjective, "__init__", spy)
    first = DistillStageConfig.model_validate(
        {
            "train": {"epochs": 1, "batch_size": 256},
            "student": {"keep_layers": [0, 3]},
            "losses": {"hidden": {}},
        }
    )
    ctx1 = stage_context(tmp_path / "r", data, teacher, kind="distill", index=0, teacher=teacher)
    out1 = DistillStage().run(ctx1, first).model
    assert len(out1.blocks) == 2
    second = DistillStageConfig.model_validate(
        {
            "train": {"epochs": 1, "batch_size": 256},
            "teacher": "previous",
            "losses": {"kd": None, "ce": {"weight": 1.0}, "minilm": {}},
        }
    )
    ctx2 = stage_context(tmp_path / "r", data, out1, kind="distill", index=1, teacher=teacher)
    ctx2.history = {"01-distill": {}}
    res2 = DistillStage().run(ctx2, second)
    # stage 1 distilled from the pipeline's 4-block teacher, stage 2 from stage 1's 2-block output
    assert len(seen[0].teacher.blocks) == 4 and len(seen[1].teacher.blocks) == 2
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(seen[1].teacher(x), out1.eval()(x))
    assert res2.metrics["teacher"] == "previous"
    assert res2.metrics["losses"]["terms"] == ["ce", "minilm"] and res2.metrics["losses"]["minilm_pair"] == [
        2,
        2,
    ]
    assert len(res2.model.blocks) == 2  # later stages continue the current model
    assert seen[0].describe()["hidden_pairs"] == [[0, 0], [1, 2], [2, 4]]


def test_default_stage_config_dump_is_unchanged():
    dump = DistillStageConfig().model_dump(mode="json")
    assert dump["losses"] == {"kd": {"temperature": 4.0, "weight": 0.9}, "ce": {"weight": 0.1}}
