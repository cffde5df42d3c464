"""``qat``: quantization-aware training with learned (LSQ) scales, distilled from a float teacher.

The model entering the stage is copied, fake quantizers are inserted
(``compress.quant.prepare_qat``: weights per output channel, layer inputs and
both attention-matmul inputs per tensor, symmetric INT8), their scales are
calibrated on a few training batches, then weights and scales are trained with
KD from a full-precision teacher plus CE. The result is the fake-quantized
model; ``export`` turns its learned scales into INT8 Q/DQ ONNX.

Example (pipeline YAML)::

    - qat:
        quant: {calibration: {method: percentile, batches: 8}}
        train: {epochs: 3, lr: 5.0e-4}
        teacher: previous   # KD from the float model entering the stage

Metrics: ``calibration`` (method, percentile, batches, examples),
``quantized_layers`` (QuantLinear + QuantMatMul count), ``quantizers``,
``val_accuracy_float`` (entering model), ``val_accuracy_calibrated`` (after
calibration, before training), ``val_accuracy`` (after QAT), ``history`` and
``steps`` (from ``fit``), ``teacher``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, field_validator

from compress.distill import LossesConfig, kd_objective
from compress.errors import StageError
from compress.quant import QuantConfig, calibrate_, is_quantized, prepare_qat, quantized_modules, quantizers
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig, evaluate


class QATTrainConfig(TrainConfig):
    """``TrainConfig`` with QAT defaults: a short, low-learning-rate schedule from trained weights."""

    epochs: int = Field(3, ge=0, le=10_000, description="Passes over the training split.")
    lr: float = Field(5e-4, gt=0, le=10.0, description="Peak learning rate (weights and scales).")


class QATStageConfig(StageConfig):
    """Settings of the ``qat`` stage."""

    quant: QuantConfig = Field(
        default_factory=QuantConfig, description="What is quantized and how scales start."
    )
    train: QATTrainConfig = Field(
        default_factory=QATTrainConfig, description="Optimizer, schedule and epochs."
    )
    losses: LossesConfig = Field(
        default_factory=LossesConfig, description="KD (from the teacher) and CE terms."
    )
    teacher: Literal["original", "previous"] = Field(
        "previous",
        description="KD teacher: 'previous' = the float model entering this stage (same architecture); "
        "'original' = the pipeline's teacher.",
    )
    teacher_intervention: Any = Field(
        None,
        description="Teacher Intervention settings; not available yet (lands with issue 6), must be null.",
    )

    @field_validator("teacher_intervention", mode="before")
    @classmethod
    def _no_ti_yet(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(
                f"got {v!r}; Teacher Intervention lands with issue 6 and is not available yet: "
                "remove teacher_intervention (or set it to null)"
            )
        return None


@register_stage
class QATStage(Stage):
    """Insert fake quantizers, calibrate, and train with KD from a float teacher."""

    name = "qat"
    config_class = QATStageConfig
    before = frozenset({"export", "validate"})
    max_count = 1
    description = (
        "Quantization-aware training: INT8 fake quantizers, calibrated then LSQ-trained with KD + CE."
    )

    def run(self, ctx: StageContext, cfg: QATStageConfig) -> StageResult:
        if is_quantized(ctx.model):
            raise StageError(
                "the model entering qat already has fake quantizers; use one qat stage per pipeline",
                stage=self.name,
                yaml_path=ctx.yaml_path,
            )
        eval_bs = ctx.pipeline.data.eval_batch_size
        bs = cfg.train.batch_size or ctx.batch_size
        val_float = evaluate(ctx.model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        teacher = copy.deepcopy(ctx.model) if cfg.teacher == "previous" else ctx.teacher
        teacher.eval()
        model = prepare_qat(copy.deepcopy(ctx.model), cfg.quant)

        n_batches = cfg.quant.calibration.batches
        seen = {"batches": 0, "examples": 0}

        def forward_loop(m: Any) -> None:
            for i, (x, _) in enumerate(ctx.data.batches("train", bs, shuffle=True, seed=ctx.seed)):
                if i >= n_batches:
                    break
                m(x)
                seen["batches"] += 1
                seen["examples"] += len(x)

        calibrate_(model, forward_loop)
        val_calibrated = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        res = ctx.fit(model, kd_objective(teacher, cfg.losses), cfg.train, label="qat")
        model.eval()
        val = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        cal = cfg.quant.calibration
        metrics: dict[str, Any] = {
            "calibration": {
                "method": cal.method,
                "percentile": cal.percentile if cal.method == "percentile" else None,
                "batches": seen["batches"],
                "examples": seen["examples"],
            },
            "quantized_layers": len(quantized_modules(model)),
            "quantizers": sum(1 for _ in quantizers(model)),
            "weight_bits": cfg.quant.weights.bits,
            "activation_bits": cfg.quant.activations.bits,
            "teacher": cfg.teacher,
            "val_accuracy_float": val_float,
            "val_accuracy_calibrated": val_calibrated,
            "val_accuracy": val,
            "history": res.history,
            "steps": res.steps,
        }
        return StageResult(model=model, metrics=metrics)
