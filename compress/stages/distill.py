"""``distill``: train a smaller student from the teacher with KD (T², KL) + CE.

The first ``distill`` stage builds the student from the teacher as the
pipeline's ``student:`` section (or the stage's own ``student:``) says, e.g.
``keep_layers: [0, 2]`` keeps two blocks initialised from the teacher's
(DistilBERT-style). Later ``distill`` stages continue training the current
model (progressive distillation) unless they give their own ``student:``.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field

from compress.config.schema import StudentConfig
from compress.distill import LossesConfig, kd_objective, student_by_depth
from compress.errors import StageError
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig


class DistillStageConfig(StageConfig):
    """Settings of the ``distill`` stage."""

    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=15, lr=1e-3), description="Optimizer, schedule and epochs."
    )
    losses: LossesConfig = Field(default_factory=LossesConfig, description="KD and CE terms and weights.")
    student: StudentConfig | None = Field(
        None, description="Student to build from the teacher; default: the pipeline's `student:` (first distill only)."
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
    description = "Distil the teacher into a smaller student (KD with temperature, T² scaling, + CE)."

    def run(self, ctx: StageContext, cfg: DistillStageConfig) -> StageResult:
        first = not any(k.endswith("-distill") for k in ctx.history)
        spec = cfg.student if cfg.student is not None else (ctx.pipeline.student if first else None)
        if spec is not None and spec.keep_layers is not None:
            try:
                student = student_by_depth(ctx.teacher, spec.keep_layers)
            except ValueError as e:
                raise StageError(str(e), stage=self.name, yaml_path=f"{ctx.yaml_path}.student.keep_layers") from e
        elif spec is not None:
            student = copy.deepcopy(ctx.teacher)
        else:
            student = copy.deepcopy(ctx.model)
        kd_teacher = ctx.teacher if cfg.teacher == "original" else ctx.model
        res = ctx.fit(student, kd_objective(kd_teacher, cfg.losses), cfg.train, label="distill")
        student.eval()
        return StageResult(
            model=student,
            metrics={
                "history": res.history,
                "steps": res.steps,
                "kept_layers": spec.keep_layers if spec is not None else None,
            },
        )
