"""``prune``: remove attention heads and FFN neurons to a MAC target, with KD recovery.

The model entering the stage is copied and pruned by ``compress.prune.prune_``
in ``iterative_steps`` steps; after each step the pruned model is fine-tuned for
``recover.epochs`` epochs with knowledge distillation from a teacher (by
default the unpruned model that entered the stage) plus label cross-entropy.
With ``importance: taylor`` the channel scores come from the gradients of the
same loss on ``calibration_examples`` training examples. The stage returns the
pruned model, a plain smaller model of its family.

Example YAML::

    - prune:
        target: {macs: 0.5}
        iterative_steps: 3
        recover: {epochs: 2, train: {lr: 0.0005}}
        teacher: previous
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field, FieldSerializationInfo, field_serializer, model_validator
from torch import nn

from compress._utils.io import sha256_json
from compress.config.base import CompressConfig
from compress.distill import LossesConfig, kd_objective
from compress.errors import StageError
from compress.prune import CRITERIA, PruneConfig, prune_
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig, evaluate


class PruneRecoverConfig(CompressConfig):
    """Fine-tuning after each pruning step."""

    epochs: int = Field(2, ge=0, le=1000, description="Recovery epochs after each pruning step; 0 disables.")
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Optimizer and schedule of each recovery run (its epochs come from recover.epochs).",
    )

    @model_validator(mode="after")
    def _epochs_in_one_place(self) -> PruneRecoverConfig:
        # The default passes so that generated YAML (which spells out every key) validates.
        default = TrainConfig.model_fields["epochs"].default
        if "epochs" in self.train.model_fields_set and self.train.epochs != default:
            raise ValueError(
                "recover.train.epochs is not used by prune; set recover.epochs (epochs after each step), "
                "e.g. recover: {epochs: 2, train: {lr: 0.0005}}"
            )
        return self

    @field_serializer("train")
    def _dump_train_without_epochs(self, train: TrainConfig, info: FieldSerializationInfo) -> dict[str, Any]:
        # train.epochs is refused on input, so it is left out of dumps: load(dump(cfg)) == cfg.
        return train.model_dump(
            mode=info.mode,
            exclude={"epochs"},
            by_alias=bool(info.by_alias),
            exclude_unset=info.exclude_unset,
            exclude_defaults=info.exclude_defaults,
            exclude_none=info.exclude_none,
        )


class PruneStageConfig(StageConfig, PruneConfig):
    """The ``prune`` stage: every ``PruneConfig`` field plus recovery, losses and teacher."""

    recover: PruneRecoverConfig = Field(
        default_factory=PruneRecoverConfig, description="Fine-tuning after each pruning step."
    )
    losses: LossesConfig = Field(
        default_factory=LossesConfig, description="Recovery loss: KD from the teacher plus label CE."
    )
    teacher: Literal["original", "previous"] = Field(
        "previous",
        description="KD teacher for recovery: 'previous' = the unpruned model entering this stage, "
        "'original' = the pipeline's teacher.",
    )
    calibration_examples: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Training examples whose loss gradients score channels (importance: taylor only).",
    )


@register_stage
class PruneStage(Stage):
    """Structured pruning to a MAC target with KD recovery between steps."""

    name = "prune"
    config_class = PruneStageConfig
    before = frozenset({"qat", "export", "validate"})
    description = "Remove attention heads and FFN neurons to a MAC target, with KD recovery after each step."

    def run(self, ctx: StageContext, cfg: PruneStageConfig) -> StageResult:
        """Prune a copy of ``ctx.model`` and return it with size, cost and accuracy metrics.

        Raises:
            StageError: The target cannot be reached (or pruning broke the model); the
                message says what is reachable.
        """
        torch.manual_seed(ctx.seed)
        model = copy.deepcopy(ctx.model)
        teacher = ctx.teacher if cfg.teacher == "original" else ctx.model
        teacher_was_training = teacher.training
        loss_fn = kd_objective(teacher, cfg.losses)
        eval_bs = ctx.pipeline.data.eval_batch_size
        acc_before = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        score_fn = None
        if CRITERIA.get(cfg.importance).needs_grad:
            xb, yb = _calibration_batch(ctx, cfg.calibration_examples)

            def score_fn(m: nn.Module) -> torch.Tensor:
                return loss_fn(m, xb, yb)[0]

        recovered: dict[int, dict[str, float]] = {}

        def recover(m: nn.Module, step: int) -> None:
            if cfg.recover.epochs == 0:
                return
            # The architecture is part of the name: a resumed run whose pruning differs never
            # loads another shape's checkpoint.
            arch = sha256_json({k: list(v.shape) for k, v in m.state_dict().items()})[:12]
            res = ctx.fit(
                m,
                loss_fn,
                cfg.recover.train,
                label=f"prune recover {step}/{cfg.iterative_steps}",
                checkpoint=f"recover-{step}-{arch}.pt",
                seed_offset=step,
                epochs=cfg.recover.epochs,
            )
            last = res.history[-1] if res.history else {}
            recovered[step] = {k: float(v) for k, v in last.items() if k != "epoch"}

        try:
            report = prune_(
                model, cfg, example_inputs=ctx.example_inputs(2), score_fn=score_fn, recover=recover
            )
        except ValueError as e:
            raise StageError(str(e), stage=self.name, yaml_path=ctx.yaml_path) from e
        finally:
            teacher.train(teacher_was_training)
        acc_after = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        metrics: dict[str, Any] = report.to_dict()
        for row in metrics["steps"]:
            row.update({f"recover_{k}": v for k, v in recovered.get(row["step"], {}).items()})
        metrics.update(
            {"val_accuracy": acc_after, "val_accuracy_before": acc_before, "importance": cfg.importance}
        )
        return StageResult(model=model, metrics=metrics)


def _calibration_batch(ctx: StageContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training examples drawn with the stage seed (Taylor scoring data)."""
    x, y = ctx.data.tensors("train")
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]
