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

With ``teacher_intervention`` (Teacher Intervention, Kim et al. EACL 2023;
``compress.quant.intervention``, docs/teacher-intervention.md) training is
two-step: ``s`` steps in which signals of the float model entering the stage
replace the student's attention signals, then ``N - s`` steps of plain KD-QAT
with a fresh optimizer, ``N`` = epochs × steps per epoch, both with the TI
loss (soft CE on logits + hidden-state, attention-score and attention-output
MSE). ``teacher: previous`` (default) uses only that loss; ``teacher:
original`` adds the ``losses`` terms (KD from the pipeline's teacher, CE) on
top::

    - qat:
        quant:
          weights: {scheme: twn}                       # ternary
          overrides: [{pattern: head, weights: {bits: 8}}]
        train: {epochs: 3, lr: 5.0e-4}
        teacher_intervention: {mode: gradual, steps: 60}

Metrics: ``calibration`` (method, percentile, batches, examples),
``quantized_layers`` (QuantLinear + QuantMatMul count), ``quantizers``,
``val_accuracy_float`` (entering model), ``val_accuracy_calibrated`` (after
calibration, before training), ``val_accuracy`` (after QAT), ``history`` and
``steps`` (from ``fit``), ``teacher``. With TI also ``teacher_intervention``
(the settings with the resolved ``steps``), ``ti_schedule`` (list of
``{mode, from_step, to_step}``), ``step1_steps``, ``step2_steps``,
``total_steps``, ``val_accuracy_after_intervention`` and ``step_evals``;
``history`` rows then carry ``phase``, ``mode`` and the global ``step``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator

from compress.distill import LossesConfig, kd_objective
from compress.errors import StageError
from compress.quant import QuantConfig, calibrate_, is_quantized, prepare_qat, quantized_modules, quantizers
from compress.quant.config import TeacherInterventionConfig
from compress.quant.intervention import train_with_intervention
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig, evaluate
from compress.train.loop import steps_per_epoch


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
        default_factory=LossesConfig,
        description="KD (from the teacher) and CE terms; with teacher_intervention only used with "
        "teacher: original (added to the TI loss).",
    )
    teacher: Literal["original", "previous"] = Field(
        "previous",
        description="KD teacher: 'previous' = the float model entering this stage (same architecture); "
        "'original' = the pipeline's teacher.",
    )
    teacher_intervention: TeacherInterventionConfig | None = Field(
        None,
        description="Two-step QAT with Teacher Intervention (mode, steps, loss weights); null: plain KD-QAT.",
    )

    @model_validator(mode="after")
    def _losses_need_original_teacher_under_ti(self) -> QATStageConfig:
        # compared with the default (not model_fields_set) so that load(dump(cfg)) == cfg holds
        ti_on = self.teacher_intervention is not None
        if ti_on and self.teacher == "previous" and self.losses != LossesConfig():
            raise ValueError(
                "losses: with teacher_intervention and teacher 'previous' the loss is "
                "teacher_intervention.losses (it already distils from the model entering qat); "
                "remove losses, or set teacher: original to add KD from the pipeline's teacher on top"
            )
        return self


@register_stage
class QATStage(Stage):
    """Insert fake quantizers, calibrate, and train with KD from a float teacher."""

    name = "qat"
    config_class = QATStageConfig
    before = frozenset({"export", "validate"})
    max_count = 1
    description = (
        "Quantization-aware training: fake quantizers (INT8/4/2, ternary), calibrated then trained with "
        "KD + CE, or two-step with Teacher Intervention."
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
        ti_metrics: dict[str, Any] = {}
        if cfg.teacher_intervention is None:
            objective = self._kd(ctx, cfg, teacher, model)
            res = ctx.fit(model, objective, cfg.train, label="qat", before_step=objective.set_step)
            history, steps = res.history, res.steps
        else:
            history, steps, ti_metrics = self._run_ti(ctx, cfg, model, teacher)
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
            "history": history,
            "steps": steps,
            **ti_metrics,
        }
        return StageResult(model=model, metrics=metrics)

    @staticmethod
    def _kd(ctx: StageContext, cfg: QATStageConfig, teacher: Any, model: Any) -> Any:
        """The stage's ``losses`` as an objective for the quantized ``model`` (feature terms included)."""
        return kd_objective(
            teacher,
            cfg.losses,
            student=model,
            example_inputs=ctx.example_inputs(2),
            steps_per_epoch=steps_per_epoch(ctx.data, cfg.train, batch_size=ctx.batch_size),
            yaml_path=f"{ctx.yaml_path}.losses",
        )

    def _run_ti(
        self, ctx: StageContext, cfg: QATStageConfig, model: Any, kd_teacher: Any
    ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        """Two-step TI training of the calibrated ``model``; returns history, steps and TI metrics.

        The TI teacher is the float model entering the stage; with ``teacher:
        original`` the stage's ``losses`` (KD from ``kd_teacher`` + CE) are added.
        Calls ``compress.train.fit`` (through ``train_with_intervention``) with
        the same data, seed, evaluation and progress that ``ctx.fit`` uses.
        """
        ti = cfg.teacher_intervention
        assert ti is not None  # the caller checked
        ti_teacher = copy.deepcopy(ctx.model).eval()
        extra = self._kd(ctx, cfg, kd_teacher, model) if cfg.teacher == "original" else None
        try:
            res = train_with_intervention(
                model,
                ti_teacher,
                ctx.data,
                cfg.train,
                ti,
                batch_size=ctx.batch_size,
                seed=ctx.seed,
                checkpoint_dir=ctx.stage_dir,
                eval_fn=ctx.evaluate,
                reporter=ctx.reporter,
                description=f"[{ctx.index + 1}] qat",
                extra_loss=extra,
            )
        except ValueError as e:
            raise StageError(str(e), stage=self.name, yaml_path=ctx.yaml_path) from e
        after_ti = [r for r in res.history if r["phase"] == "intervention"]
        metrics = {
            "teacher_intervention": {**ti.model_dump(mode="json"), "steps": res.step1_steps},
            **res.metrics(),
            "val_accuracy_after_intervention": after_ti[-1].get("val_accuracy") if after_ti else None,
            "step_evals": res.step_evals,
        }
        return res.history, res.steps, metrics
