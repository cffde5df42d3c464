"""``prune``: remove attention heads, FFN neurons, CNN channels or whole layers to a target, with KD recovery.

The model entering the stage is copied and pruned by ``compress.prune.prune_``
in ``iterative_steps`` steps; after each step the pruned model is fine-tuned for
``recover.epochs`` epochs with knowledge distillation from a teacher (by
default the unpruned model that entered the stage) plus label cross-entropy.
With ``importance: taylor`` or ``head_gate`` the channel scores come from the
gradients of the same loss on ``calibration_examples`` training examples (in
batches of the pipeline's batch size); ``layers: {drop: N}`` scores layers by
the loss increase on the same examples. With ``target: {latency: ...}`` the
stage exports each candidate to FP32 ONNX (or hands the module to a torch
runtime), times it with the bench harness on the named deploy target and
prunes further until the p95 budget holds; when it cannot, the stage keeps the
most-pruned candidate, reports the reason and records a failed gate
``prune.latency[<target>]@<batch>.p95_ms`` in its metrics (``gates``: name,
passed, measured, budget, message) for the run's gate evaluation. A pruned
Hugging Face model is also written as a transformers directory
(``stages/NN-prune/hf/``) when its config can describe it (see
``compress.prune._hf``); otherwise metrics say why not. On token-id data,
``recover: {augment: ...}`` trains recovery on partly masked batches, teacher included
(``compress.distill.augment``); channel and layer scores stay on unperturbed batches.
Guide: docs/pruning.md.

Example YAML::

    - prune:
        target: {macs: 0.5}
        iterative_steps: 3
        recover: {epochs: 2, train: {lr: 0.0005}}
        teacher: previous
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

import torch
from pydantic import (
    Field,
    FieldSerializationInfo,
    field_serializer,
    model_validator,
)
from torch import nn

from compress._utils.io import sha256_json
from compress._utils.paths import resolve_path
from compress.config.base import CompressConfig
from compress.distill import (
    AugmentedObjective,
    LossesConfig,
    TokenAugmentConfig,
    augment_data_problem,
    augmenter_for,
    kd_objective,
)
from compress.errors import BadInputError, StageError
from compress.prune import CRITERIA, LatencyBudgetError, PruneConfig, PruneReport, prune_
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage
from compress.train import TrainConfig, evaluate


class PruneRecoverConfig(CompressConfig):
    """Fine-tuning after each pruning step."""

    added_later = ("augment",)

    epochs: int = Field(2, ge=0, le=1000, description="Recovery epochs after each pruning step; 0 disables.")
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Optimizer and schedule of each recovery run (its epochs come from recover.epochs).",
    )
    augment: TokenAugmentConfig | None = Field(
        None,
        description="Token-id data only: mask or replace content tokens in part of each recovery batch; the "
        "teacher sees the same perturbed input. null: off.",
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
        description="Training examples whose loss (gradients) score channels (taylor, head_gate) and layers "
        "(layers.drop).",
    )


@register_stage
class PruneStage(Stage):
    """Structured pruning to a MAC target with KD recovery between steps."""

    name = "prune"
    config_class = PruneStageConfig
    before = frozenset({"qat", "export", "validate"})
    description = (
        "Remove attention heads, FFN neurons, CNN channels or layers to a MAC, parameter or latency target, "
        "with KD recovery after each step."
    )

    @classmethod
    def check_data(cls, cfg: PruneStageConfig, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """``recover.augment`` on image data is an error before any work."""
        problem = None if cfg.recover.augment is None else augment_data_problem(data)
        return [] if problem is None else [(("recover", "augment"), problem)]

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
        aug = None
        if cfg.recover.augment is not None:
            aug = augmenter_for(
                cfg.recover.augment, ctx.data, seed=ctx.seed, yaml_path=f"{ctx.yaml_path}.recover.augment"
            )
        # Only recovery trains on perturbed batches; channel and layer scores use the plain loss.
        recover_fn = loss_fn if aug is None else AugmentedObjective(loss_fn, aug)
        eval_bs = ctx.pipeline.data.eval_batch_size
        acc_before = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        score_fn = None
        if CRITERIA.get(cfg.importance).needs_grad or cfg.layers is not None:
            xb, yb = _calibration_batch(ctx, cfg.calibration_examples)
            bs = max(1, ctx.pipeline.data.batch_size)

            def score_fn(m: nn.Module) -> list[torch.Tensor]:
                dev = next(m.parameters()).device
                return [
                    loss_fn(m, xb[i : i + bs].to(dev), yb[i : i + bs].to(dev))[0]
                    for i in range(0, len(xb), bs)
                ]

        recovered: dict[int, dict[str, float]] = {}

        def recover(m: nn.Module, step: int) -> None:
            if cfg.recover.epochs == 0:
                return
            # The architecture is part of the name: a resumed run whose pruning differs never
            # loads another shape's checkpoint.
            arch = sha256_json({k: list(v.shape) for k, v in m.state_dict().items()})[:12]
            res = ctx.fit(
                m,
                recover_fn,
                cfg.recover.train,
                label=f"prune recover {step}/{cfg.iterative_steps}",
                checkpoint=f"recover-{step}-{arch}.pt",
                seed_offset=step,
                epochs=cfg.recover.epochs,
                # reseeded per optimizer step (a resumed run perturbs as an uninterrupted one), one
                # random stream per pruning step
                before_step=None if aug is None else functools.partial(aug.reseed, stream=step),
            )
            last = res.history[-1] if res.history else {}
            recovered[step] = {k: float(v) for k, v in last.items() if k != "epoch"}

        latency_fn = _latency_fn(ctx, cfg) if cfg.target.latency is not None else None
        gates: list[dict[str, Any]] = []
        try:
            report: PruneReport = prune_(
                model,
                cfg,
                example_inputs=ctx.example_inputs(2),
                score_fn=score_fn,
                recover=recover,
                latency_fn=latency_fn,
            )
        except LatencyBudgetError as e:
            report = e.report
        except ValueError as e:
            raise StageError(str(e), stage=self.name, yaml_path=ctx.yaml_path) from e
        finally:
            teacher.train(teacher_was_training)
        if report.latency is not None:
            lat = report.latency
            gates.append(
                {
                    "name": f"prune.latency[{lat['target']}]@{lat['batch']}.p95_ms",
                    "passed": bool(lat["met"]),
                    "measured": round(float(lat["p95_ms_after"]), 4),
                    "budget": lat["p95_ms_budget"],
                    "message": lat["message"],
                }
            )
            if not lat["met"]:
                ctx.reporter.line(f"prune: latency budget not met: {lat['message']}")
        acc_after = evaluate(model, ctx.data, "val", batch_size=eval_bs)["accuracy"]
        metrics: dict[str, Any] = report.to_dict()
        for row in metrics["steps"]:
            row.update({f"recover_{k}": v for k, v in recovered.get(row["step"], {}).items()})
        metrics.update(
            {"val_accuracy": acc_after, "val_accuracy_before": acc_before, "importance": cfg.importance}
        )
        if gates:
            metrics["gates"] = gates
        if isinstance(recover_fn, AugmentedObjective):
            metrics["recover_augment"] = recover_fn.describe()["augment"]
        hf = _write_hf(ctx, model)
        if hf is not None:
            metrics["hf_directory"] = hf
        return StageResult(model=model, metrics=metrics)


def _calibration_batch(ctx: StageContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training examples drawn with the stage seed (Taylor scoring data)."""
    x, y = ctx.data.tensors("train")
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def _write_hf(ctx: StageContext, model: nn.Module) -> dict[str, Any] | None:
    """Write a pruned Hugging Face model as ``stage_dir/hf`` when its config can describe it."""
    from compress.models.external import hf_directory
    from compress.prune._hf import save_hf_directory

    net = hf_directory(model)
    if net is None:
        return None
    src = ctx.pipeline.teacher.config.get("path") if isinstance(ctx.pipeline.teacher.config, dict) else None
    tok: Any = None
    if isinstance(src, str):
        try:
            tok = resolve_path(src)
        except Exception:  # noqa: BLE001 - the tokenizer is a convenience; the model is still written
            tok = None
    out = save_hf_directory(net, ctx.stage_dir / "hf", tokenizer_dir=tok)
    if out.get("written"):
        out["path"] = str((ctx.stage_dir / "hf").relative_to(ctx.run_dir))
    return out


def _latency_fn(ctx: StageContext, cfg: PruneStageConfig) -> Any:
    """``model -> p95 ms`` on the budget's deploy target, with the bench harness."""
    import tempfile
    from pathlib import Path

    from compress.bench.latency import measure_latency
    from compress.config.api import find_deploy_dir, list_targets, load_target
    from compress.runtime import RUNTIMES, open_session

    budget = cfg.target.latency
    assert budget is not None
    target = ctx.targets.get(budget.target)
    if target is None:
        deploy = find_deploy_dir(Path.cwd() / "pipeline.yaml")
        available = list_targets(deploy) if deploy else {}
        if budget.target not in available:
            raise BadInputError(
                f"{ctx.yaml_path}.target.latency.target: unknown deploy target '{budget.target}'; targets in "
                f"{deploy}: {', '.join(available) or '(none)'} (add deploy/{budget.target}.yaml)"
            )
        target = load_target(available[budget.target])
    runtime = RUNTIMES.get(target.runtime)
    ok, why = runtime.can_run_here(target.device)
    if not ok:
        raise BadInputError(
            f"{ctx.yaml_path}.target.latency.target: '{budget.target}' cannot run here: {why}"
        )
    x = ctx.example_inputs(budget.batch)

    def latency_fn(model: nn.Module) -> float:
        m = copy.deepcopy(model).float().eval().cpu()
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.stage_dir) as tmp:
            if "torch" in runtime.formats:
                source: Any = m
            elif "onnx" in runtime.formats:
                from compress.export import export_onnx

                source = export_onnx(m, Path(tmp) / "candidate.onnx", x[:2])
            else:
                raise BadInputError(
                    f"{ctx.yaml_path}.target.latency.target: runtime '{target.runtime}' loads "
                    f"{sorted(runtime.formats)}; a latency target needs a torch or ONNX runtime"
                )
            feed = x.numpy()
            with open_session(target.runtime, source, device=target.device, threads=target.threads) as sess:
                name = sess.inputs[0].name
                stats = measure_latency(
                    sess,
                    lambda b: {name: feed[:b]},
                    batch_sizes=[budget.batch],
                    warmup=target.warmup,
                    iterations=target.iterations,
                )
        return float(stats[budget.batch].p95_ms)

    return latency_fn
