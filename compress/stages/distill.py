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
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field

from compress.config.schema import StudentConfig
from compress.distill import DistillObjective, LossesConfig
from compress.distill.student import build_student
from compress.errors import StageError
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig
from compress.train.loop import steps_per_epoch


class DistillStageConfig(StageConfig):
    """Settings of the ``distill`` stage."""

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
    teacher: Literal["original", "previous"] = Field(
        "original", description="KD teacher: the pipeline's teacher, or the model entering this stage."
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
        kd_teacher = ctx.teacher if cfg.teacher == "original" else ctx.model
        objective = DistillObjective(
            kd_teacher,
            cfg.losses,
            student=student,
            example_inputs=ctx.example_inputs(2),
            steps_per_epoch=steps_per_epoch(ctx.data, cfg.train, batch_size=ctx.batch_size),
            yaml_path=f"{ctx.yaml_path}.losses",
        )
        res = ctx.fit(student, objective, cfg.train, label="distill", before_step=objective.set_step)
        student.eval()
        return StageResult(
            model=student,
            metrics={
                "history": res.history,
                "steps": res.steps,
                "kept_layers": spec.keep_layers if spec is not None else None,
                "teacher": cfg.teacher,
                "losses": objective.describe(),
            },
        )
