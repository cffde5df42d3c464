"""The qat stage with Teacher Intervention: config rules, a ternary two-step run, metrics, Q/DQ parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from compress._utils.progress import Reporter
from compress.errors import StageError
from compress.export import export_onnx_qdq, parity
from compress.quant import TernaryWeightQuantizer, is_quantized
from compress.stages.qat import QATStage, QATStageConfig
from compress.train import evaluate
from tests._helpers.models import digits, tiny_vit, stage_context

W2A8 = {
    "weights": {"scheme": "twn"},
    "overrides": [
        {"pattern": "patch_embed", "weights": {"bits": 8}},
        {"pattern": "head", "weights": {"bits": 8}},
    ],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return digits(tmp_path_factory.mktemp("qat-ti-data"))


def _ctx(
    tmp_path: Path, data: Any, model: torch.nn.Module, teacher: torch.nn.Module | None = None, **kw: Any
):
    return stage_context(tmp_path, data, model, kind="qat", index=1, teacher=teacher, reporter=kw.get("reporter"))


def test_teacher_intervention_config_is_accepted_and_checked():
    cfg = QATStageConfig.model_validate({"teacher_intervention": {"mode": "map", "steps": 60}})
    ti = cfg.teacher_intervention
    assert (ti.mode, ti.steps, ti.losses.logits, ti.losses.ce) == ("map", 60, 1.0, 0.0)
    assert QATStageConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert QATStageConfig().teacher_intervention is None  # null keeps plain KD-QAT
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QATStageConfig.model_validate({"teacher_intervention": {"layers": "all"}})
    with pytest.raises(pydantic.ValidationError, match="teacher_intervention.mode"):
        QATStageConfig.model_validate({"teacher_intervention": {"mode": "attention"}})
    with pytest.raises(pydantic.ValidationError, match="set teacher: original to add KD"):
        QATStageConfig.model_validate({"teacher_intervention": {}, "losses": {"ce": {"weight": 1.0}}})
    both = {"teacher_intervention": {}, "teacher": "original", "losses": {"ce": {"weight": 1.0}}}
    assert QATStageConfig.model_validate(both).losses.ce.weight == 1.0


def test_ternary_gradual_ti_runs_end_to_end_and_exports_with_parity(tmp_path, data, capsys):
    fp = tiny_vit().eval()
    cfg = QATStageConfig.model_validate(
        {
            "quant": W2A8,
            "train": {"epochs": 1, "batch_size": 128},  # 1259 train examples -> N = 10 steps
            "teacher_intervention": {"mode": "gradual", "steps": 6, "eval_every_steps": 5},
        }
    )
    res = QATStage().run(_ctx(tmp_path, data, fp, reporter=Reporter(quiet=True)), cfg)
    m = res.metrics
    assert m["ti_schedule"] == [
        {"mode": "output", "from_step": 0, "to_step": 1},
        {"mode": "context", "from_step": 1, "to_step": 2},
        {"mode": "map", "from_step": 2, "to_step": 6},
        {"mode": "none", "from_step": 6, "to_step": 10},
    ]
    assert (m["steps"], m["step1_steps"], m["step2_steps"], m["total_steps"]) == (10, 6, 4, 10)
    assert m["teacher_intervention"]["mode"] == "gradual"
    assert [(r["phase"], r["step"], r["mode"]) for r in m["history"]] == [
        ("intervention", 6, "map"),
        ("kd_qat", 10, "none"),
    ]
    assert [(r["step"], r["mode"]) for r in m["step_evals"]] == [(5, "map"), (10, "none")]
    assert {"logits", "hidden", "scores", "attention_output", "val_accuracy"} <= set(m["history"][0])
    assert m["val_accuracy_after_intervention"] == m["history"][0]["val_accuracy"]
    # each mode switch is logged
    err = capsys.readouterr().err
    for label in (
        "output (TI-O) for optimizer steps [0, 1)",
        "context (TI-C)",
        "map (TI-M)",
        "off (plain KD-QAT",
    ):
        assert label in err
    model = res.model
    assert is_quantized(model)
    assert isinstance(model.blocks[0].mlp.fc1.weight_quantizer, TernaryWeightQuantizer)
    assert m["val_accuracy"] == pytest.approx(evaluate(model, data, "val")["accuracy"])
    assert not list((tmp_path / "stages" / "02-qat").glob("ti_*"))
    x = data.tensors("val")[0]
    path = export_onnx_qdq(model, tmp_path / "w2a8.onnx", x[:2])
    p = parity(path, model, x)
    logits = model(x).detach()
    assert p["top1_agreement"] >= 0.98
    assert p["max_abs_error"] < 0.02 * float(logits.max() - logits.min())


def test_original_teacher_adds_its_kd_terms_on_top(tmp_path, data):
    model, teacher = tiny_vit(seed=1).eval(), tiny_vit(seed=2).eval()
    cfg = QATStageConfig.model_validate(
        {
            "train": {"epochs": 1, "batch_size": 256},
            "teacher": "original",
            "teacher_intervention": {"mode": "output"},
        }
    )
    m = QATStage().run(_ctx(tmp_path, data, model, teacher), cfg).metrics
    assert m["step1_steps"] == 1  # round(5 / 8)
    assert {"logits", "original_kd", "original_ce"} <= set(m["history"][0])


def test_too_long_step_1_is_a_stage_error(tmp_path, data):
    cfg = QATStageConfig.model_validate(
        {"train": {"epochs": 1, "batch_size": 256}, "teacher_intervention": {"mode": "map", "steps": 50}}
    )
    with pytest.raises(
        StageError, match=r"stages\[1\]\.qat.*teacher_intervention.steps: got 50; expected 0 <= steps <= 5"
    ):
        QATStage().run(_ctx(tmp_path, data, tiny_vit()), cfg)
