"""``distill``: train a smaller student from the teacher with the terms of ``losses:``.

The first ``distill`` stage builds the student from the teacher as the
pipeline's ``student:`` section (or the stage's own ``student:``) says, e.g.
``keep_layers: [0, 2]`` keeps two blocks initialised from the teacher's
(DistilBERT-style). Later ``distill`` stages continue training the current
model unless they give their own ``student:``. Each stage picks its own teacher
(``teacher: original`` = the pipeline's teacher, ``previous`` = the model entering
the stage) and its own ``losses:`` (KD, CE, DKD, hidden states, TinyBERT attention,
MiniLM, MiniLMv2, DistilBERT cosine; ``compress.distill.config``), so several stages
in a row give ERNIE-Tiny-style progressive distillation (docs/distillation.md).
``augment:`` perturbs part of each training batch of token ids (masked or replaced
tokens) and distils on it, teacher included (TinyBERT-style; ``compress.distill.augment``).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from compress.config.schema import ModelSourceConfig, StudentConfig, data_union
from compress.distill import (
    AugmentedObjective,
    DistillObjective,
    LossesConfig,
    TokenAugmentConfig,
    augment_data_problem,
    augmenter_for,
)
from compress.distill.student import build_student
from compress.errors import StageError
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig
from compress.train.loop import steps_per_epoch


class DistillStageConfig(StageConfig):
    """Settings of the ``distill`` stage."""

    added_later = ("augment",)

    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=15, lr=1e-3), description="Optimizer, schedule and epochs."
    )
    losses: LossesConfig = Field(
        default_factory=LossesConfig,
        description="Loss terms and weights (kd, ce, dkd, hidden, attention, ...).",
    )
    student: StudentConfig | None = Field(
        None,
        description="Student built from the teacher; default: the pipeline's `student:` (first distill)",
    )
    teacher: Literal["original", "previous"] | ModelSourceConfig = Field(
        "original",
        description=(
            "KD teacher: the pipeline's teacher, the model entering this stage, or a model source of its own "
            "(e.g. the pre-trained model before fine-tuning, for ERNIE-Tiny's general distillation)."
        ),
    )
    data: data_union() | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "Data for this stage instead of the pipeline's (e.g. general data first, task data later); same input "
            "format. With other classes than the task's, disable ce and dkd (labels are meaningless to the head)."
        ),
    )
    augment: TokenAugmentConfig | None = Field(
        None,
        description=(
            "Token-id data only: mask or replace content tokens in part of each training batch; the teacher "
            "sees the same perturbed input (TinyBERT-style). null: off."
        ),
    )


@register_stage
class DistillStage(Stage):
    """Distil the teacher into a student built from it."""

    name = "distill"
    config_class = DistillStageConfig
    before = frozenset({"prune", "qat", "export", "validate"})
    description = (
        "Distil the teacher into a smaller student (KD + CE by default; DKD, hidden states, TinyBERT "
        "attention, MiniLM/MiniLMv2 relations, cosine)."
    )

    @classmethod
    def check_data(cls, cfg: DistillStageConfig, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """``augment`` on image data is an error before any work (the stage's own ``data:`` first)."""
        problem = None if cfg.augment is None else augment_data_problem(cfg.data or data)
        return [] if problem is None else [(("augment",), problem)]

    def run(self, ctx: StageContext, cfg: DistillStageConfig) -> StageResult:
        first = not any(k.endswith("-distill") for k in ctx.history)
        spec = cfg.student if cfg.student is not None else (ctx.pipeline.student if first else None)
        if spec is not None:
            try:
                student = build_student(ctx.teacher, spec, ctx.example_inputs())
            except ValueError as e:
                raise StageError(str(e), stage=self.name, yaml_path=f"{ctx.yaml_path}.student") from e
        else:
            student = copy.deepcopy(ctx.model)
        at = ("stages", ctx.index, self.name)
        if isinstance(cfg.teacher, ModelSourceConfig):
            if ctx.load_model is None:
                raise StageError("a teacher of its own needs the runner's model loader", stage=self.name)
            kd_teacher = ctx.load_model(cfg.teacher, (*at, "teacher"))
            teacher_label = f"{cfg.teacher.family} model"
        else:
            kd_teacher = ctx.teacher if cfg.teacher == "original" else ctx.model
            teacher_label = cfg.teacher
        data = ctx.data
        if cfg.data is not None:
            if ctx.load_data is None:
                raise StageError("stage data needs the runner's data loader", stage=self.name)
            data = ctx.load_data(cfg.data, (*at, "data"))
            self._check_stage_data(ctx, cfg, data)
        augmenter = None
        if cfg.augment is not None:
            augmenter = augmenter_for(cfg.augment, data, seed=ctx.seed, yaml_path=f"{ctx.yaml_path}.augment")
        objective = DistillObjective(
            kd_teacher,
            cfg.losses,
            student=student,
            example_inputs=ctx.example_inputs(2),
            steps_per_epoch=steps_per_epoch(data, cfg.train, batch_size=ctx.batch_size),
            yaml_path=f"{ctx.yaml_path}.losses",
        )
        loss_fn = objective if augmenter is None else AugmentedObjective(objective, augmenter)
        res = ctx.fit(
            student,
            loss_fn,
            cfg.train,
            label="distill",
            before_step=loss_fn.set_step,
            data=data if cfg.data is not None else None,
        )
        student.eval()
        metrics: dict[str, Any] = {
            "history": res.history,
            "steps": res.steps,
            "kept_layers": spec.keep_layers if spec is not None else None,
            "teacher": teacher_label,
            "data": {"source": data.name, "train_examples": data.split_size("train")},
            "losses": objective.describe(),
        }
        if isinstance(loss_fn, AugmentedObjective):
            metrics["augment"] = loss_fn.describe()["augment"]
        return StageResult(model=student, metrics=metrics)

    @staticmethod
    def _check_stage_data(ctx: StageContext, cfg: DistillStageConfig, data: object) -> None:
        """The stage's data must feed the same inputs; other classes rule out label losses."""
        from compress.errors import ConfigError

        here = f"{ctx.yaml_path}.data"
        if tuple(data.input_shape) != tuple(ctx.data.input_shape) or data.inputs.dtype != ctx.data.inputs.dtype:  # type: ignore[attr-defined]
            raise ConfigError(
                f"{here}: inputs of shape {tuple(data.input_shape)} ({data.inputs.dtype}) do not match the "  # type: ignore[attr-defined]
                f"pipeline data's {tuple(ctx.data.input_shape)} ({ctx.data.inputs.dtype}); use data of the same "
                "format (image size and channels, or max_length and tokenizer)"
            )
        if data.num_classes != ctx.data.num_classes and (cfg.losses.ce is not None or cfg.losses.dkd is not None):  # type: ignore[attr-defined]
            raise ConfigError(
                f"{here}: {data.num_classes} classes, the task has {ctx.data.num_classes}; "  # type: ignore[attr-defined]
                f"labels of other classes cannot train the head: set {ctx.yaml_path}.losses.ce: null (and dkd: null)"
            )
