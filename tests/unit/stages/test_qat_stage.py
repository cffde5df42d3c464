"""The qat stage on a 2-block tiny-vit: config rules, calibration, one epoch of LSQ+KD training, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

import compress.stages.qat as qat_module
from compress.quant import QuantLinear, is_quantized, quantizers
from compress.stages import STAGES, StageContext
from compress.stages.qat import QATStage, QATStageConfig
from compress.train import evaluate
from tests._helpers.models import digits, tiny_vit, stage_context


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return digits(tmp_path_factory.mktemp("qat-data"))


def _ctx(
    tmp_path: Path, data: Any, model: torch.nn.Module, teacher: torch.nn.Module | None = None
) -> StageContext:
    return stage_context(tmp_path, data, model, kind="qat", index=1, teacher=teacher)


def test_registered_with_ordering():
    assert STAGES.get("qat") is QATStage
    assert QATStage.before == {"export", "validate"}
    assert QATStage.max_count == 1


def test_config_defaults_and_teacher_intervention_is_rejected():
    cfg = QATStageConfig()
    assert (cfg.train.epochs, cfg.train.lr, cfg.teacher, cfg.teacher_intervention) == (
        3,
        5e-4,
        "previous",
        None,
    )
    assert QATStageConfig.model_validate({"train": {"epochs": 5}}).train.lr == 5e-4  # QAT default kept
    assert cfg.losses.kd is not None
    assert cfg.losses.ce is not None
    with pytest.raises(pydantic.ValidationError, match="extra"):  # TI config is strict too
        QATStageConfig.model_validate({"teacher_intervention": {"layers": "all"}})
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QATStageConfig.model_validate({"quantize": {}})
    assert QATStageConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_one_epoch_on_tiny_vit(tmp_path, data):
    fp = tiny_vit().eval()
    fp_state = {k: v.clone() for k, v in fp.state_dict().items()}
    ctx = _ctx(tmp_path, data, fp)
    cfg = QATStageConfig.model_validate({"train": {"epochs": 1, "batch_size": 128}})
    res = QATStage().run(ctx, cfg)
    m = res.metrics
    assert m["calibration"] == {"method": "minmax", "percentile": None, "batches": 4, "examples": 512}
    assert (m["quantized_layers"], m["quantizers"], m["teacher"]) == (18, 36, "previous")
    assert len(m["history"]) == 1
    assert {"kd", "ce", "val_accuracy"} <= set(m["history"][0])
    assert m["steps"] == 10  # 1259 train examples / 128
    model = res.model
    assert is_quantized(model)
    assert isinstance(model.head, QuantLinear)
    assert not model.training
    assert m["val_accuracy"] == pytest.approx(evaluate(model, data, "val")["accuracy"])
    for key in ("val_accuracy_float", "val_accuracy_calibrated"):
        assert 0.0 <= m[key] <= 1.0
    # the entering model is untouched and the epoch checkpoint is cleaned up
    assert not is_quantized(fp)
    assert all(torch.equal(v, fp_state[k]) for k, v in fp.state_dict().items())
    assert not (ctx.stage_dir / "train.ckpt").exists()


def test_scales_are_learned_only_when_asked(tmp_path, data):
    fp = tiny_vit().eval()
    fixed_scales = {"weights": {"learn_scale": False}, "activations": {"learn_scale": False}}

    def run(epochs: int, quant: dict[str, Any]) -> torch.nn.Module:
        cfg = QATStageConfig.model_validate({"train": {"epochs": epochs, "batch_size": 256}, "quant": quant})
        return QATStage().run(_ctx(tmp_path, data, fp), cfg).model

    calibrated, trained, fixed = run(0, {}), run(1, {}), run(1, fixed_scales)
    scales = {
        name: dict(quantizers(mm)) for name, mm in (("cal", calibrated), ("lsq", trained), ("fixed", fixed))
    }
    names = list(scales["cal"])
    moved = [n for n in names if not torch.equal(scales["cal"][n].log_scale, scales["lsq"][n].log_scale)]
    assert len(moved) == len(names)
    assert all(torch.equal(scales["cal"][n].log_scale, scales["fixed"][n].log_scale) for n in names)


@pytest.mark.parametrize(("choice", "expected"), [("previous", "model"), ("original", "teacher")])
def test_kd_teacher_choice(tmp_path, data, monkeypatch, choice, expected):
    seen: dict[str, Any] = {}
    real = qat_module.kd_objective

    def spy(teacher, losses, **options):
        seen["teacher"] = teacher
        return real(teacher, losses, **options)

    monkeypatch.setattr(qat_module, "kd_objective", spy)
    model, teacher = tiny_vit(seed=1).eval(), tiny_vit(seed=2).eval()
    cfg = QATStageConfig.model_validate({"train": {"epochs": 1, "batch_size": 256}, "teacher": choice})
    QATStage().run(_ctx(tmp_path, data, model, teacher), cfg)
    x = torch.randn(4, 1, 8, 8)
    want = model if expected == "model" else teacher
    assert torch.equal(seen["teacher"](x), want(x))
    assert not is_quantized(seen["teacher"])


def test_refuses_an_already_quantized_model(tmp_path, data):
    first = QATStage().run(
        _ctx(tmp_path, data, tiny_vit()), QATStageConfig.model_validate({"train": {"epochs": 0}})
    )
    with pytest.raises(Exception, match="already has fake quantizers") as exc:
        QATStage().run(_ctx(tmp_path, data, first.model), QATStageConfig())
    assert "stages[1].qat" in str(exc.value)


def test_feature_loss_terms_train_the_quantized_student(tmp_path, data):
    """Hidden-state and attention terms read the quantized student's features (learned projections too)."""
    fp = tiny_vit().eval()
    ctx = _ctx(tmp_path, data, fp, teacher=tiny_vit(depth=4, seed=1).eval())
    cfg = QATStageConfig.model_validate(
        {
            "teacher": "original",
            "train": {"epochs": 1, "batch_size": 128},
            "losses": {"hidden": {"weight": 1.0}, "attention_scores": {"weight": 0.1}},
        }
    )
    res = QATStage().run(ctx, cfg)
    row = res.metrics["history"][0]
    assert row["hidden"] > 0 and row["attention_scores"] > 0
    assert is_quantized(res.model)
