"""``finetune``: train the teacher on the task; the result becomes the pipeline's teacher.

Use it when the teacher has no weights for the task (the demo trains its
tiny-vit from scratch; a pretrained backbone gets its new head fitted). It must
come before every stage that uses the teacher.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig


class FinetuneStageConfig(StageConfig):
    """Settings of the ``finetune`` stage (cross-entropy on the labels)."""

    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=20, lr=2e-3),
        description="Optimizer, schedule and epochs.",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy.")


@register_stage
class FinetuneStage(Stage):
    """Train the teacher with cross-entropy; later stages distil from the result."""

    name = "finetune"
    config_class = FinetuneStageConfig
    before = frozenset({"distill", "prune", "qat", "export", "validate"})
    max_count = 1
    provides_teacher = True
    description = "Train or fine-tune the teacher on the task (cross-entropy); it becomes the teacher."

    def run(self, ctx: StageContext, cfg: FinetuneStageConfig) -> StageResult:
        model = copy.deepcopy(ctx.model)
        smoothing = cfg.label_smoothing

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            loss = F.cross_entropy(m(x), y, label_smoothing=smoothing)
            return loss, {"ce": loss.item()}

        res = ctx.fit(model, loss_fn, cfg.train, label="finetune")
        model.eval()
        return StageResult(model=model, teacher=model, metrics={"history": res.history, "steps": res.steps})
