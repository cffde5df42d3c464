"""The one training loop every stage uses.

``fit`` trains a model with a caller-supplied loss function (the stage decides
what the loss is: CE, KD, hidden-state MSE, ...). It owns the optimizer and
schedule, gradient accumulation and clipping, the NaN/inf check, progress,
and a checkpoint after every epoch so that a killed stage resumes from its
last finished epoch with the same result as an uninterrupted run (shuffling
and random state are derived from ``seed`` and the epoch number).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress._utils.io import atomic_torch_save, sha256_json
from compress._utils.progress import SILENT, Reporter
from compress.data.base import TaskData
from compress.errors import TrainingDiverged
from compress.train.config import TrainConfig

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(model, inputs, labels) -> (loss, {term: value})``."""


@dataclass
class FitResult:
    """What ``fit`` returns: per-epoch history and the number of optimizer steps taken.

    Attributes:
        history: One row per epoch: ``epoch``, ``step`` (optimizer steps taken by the
            end of the epoch), mean loss terms and ``val_*`` metrics.
        steps: Optimizer steps taken.
        resumed_from_epoch: First epoch run in this call (0 unless resumed).
        step_evals: With ``eval_every_steps``: one row per evaluation, ``step``,
            ``epoch`` and ``val_*`` metrics.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    resumed_from_epoch: int = 0
    step_evals: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with weight decay on weight matrices only (not biases, norms, scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.endswith("scale") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine, linear or constant decay."""
    warm = int(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant" or total_steps <= warm:
            return 1.0
        t = (step - warm) / max(1, total_steps - warm)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - t)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_per_epoch(data: TaskData, cfg: TrainConfig, *, batch_size: int) -> int:
    """Optimizer steps ``fit`` takes per epoch: ``ceil(ceil(train / batch) / grad_accum)``.

    ``batch_size`` is the fallback when ``cfg.batch_size`` is unset, as in ``fit``.
    """
    bs = cfg.batch_size or batch_size
    return math.ceil(math.ceil(data.split_size("train") / bs) / cfg.grad_accum)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: TaskData,
    cfg: TrainConfig,
    *,
    batch_size: int,
    seed: int,
    checkpoint: Path | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    reporter: Reporter = SILENT,
    description: str = "train",
    epochs: int | None = None,
    max_steps: int | None = None,
    before_step: Callable[[int], None] | None = None,
    eval_every_steps: int | None = None,
    step_offset: int = 0,
) -> FitResult:
    """Train ``model`` in place on the train split with ``loss_fn``.

    Args:
        model: The model to train (mutated in place).
        loss_fn: Returns the scalar loss and named terms for a batch.
        data: Data with splits attached.
        cfg: Optimizer, schedule and loop settings.
        batch_size: Examples per micro-batch.
        seed: Base seed; epoch ``e`` shuffles and seeds torch with ``seed`` and ``e``.
        checkpoint: Where to write the per-epoch checkpoint; resumes from it if present
            and written for the same settings.
        eval_fn: Called after each epoch; its metrics join the history.
        reporter: Progress output.
        description: Progress bar label.
        epochs: Overrides ``cfg.epochs``.
        max_steps: Stop after this many optimizer steps (the last epoch may end
            early); the learning-rate schedule then spans ``min(max_steps,
            epochs × steps per epoch)`` steps. ``None``: no cap.
        before_step: Called with the index of each optimizer step (0-based,
            plus ``step_offset``, counting steps taken before a resume) before
            its first micro-batch; e.g. to switch a loss mode on a step schedule.
        eval_every_steps: Also call ``eval_fn`` whenever ``step_offset`` + the
            optimizer steps taken is a multiple of this; rows go to
            ``FitResult.step_evals`` (and the checkpoint).
        step_offset: Optimizer steps taken before this call by an earlier
            training phase: shifts the step index seen by ``before_step``,
            ``eval_every_steps`` and the ``step`` of history rows (not
            ``FitResult.steps``, which counts this call's steps).

    Returns:
        A ``FitResult`` with per-epoch losses and metrics.

    Raises:
        TrainingDiverged: The loss became NaN or infinite; the message names the step and terms.
    """
    n_epochs = cfg.epochs if epochs is None else epochs
    bs = cfg.batch_size or batch_size
    n_train = data.split_size("train")
    batches_per_epoch = math.ceil(n_train / bs)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total = steps_per_epoch * n_epochs
    if max_steps is not None:
        total = min(total, max_steps)
    opt = make_optimizer(model, cfg)
    sched = make_schedule(opt, cfg, total)
    result = FitResult()
    key_fields: dict[str, Any] = {"cfg": cfg.model_dump(), "bs": bs, "seed": seed, "epochs": n_epochs}
    if max_steps is not None or eval_every_steps is not None or step_offset:
        key_fields.update(max_steps=max_steps, eval_every_steps=eval_every_steps, step_offset=step_offset)
    key = sha256_json(key_fields)
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["schedule"])
            start_epoch = int(ck["epoch"]) + 1
            result.history = [dict(h) for h in ck["history"]]
            result.steps = int(ck["steps"])
            result.step_evals = [dict(r) for r in ck.get("step_evals", [])]
            result.resumed_from_epoch = start_epoch
            reporter.line(f"  resuming {description} from epoch {start_epoch}/{n_epochs}")
    params = [p for p in model.parameters() if p.requires_grad]
    with reporter.task(description, total=max(0, (n_epochs - start_epoch) * batches_per_epoch)) as advance:
        for epoch in range(start_epoch, n_epochs):
            if max_steps is not None and result.steps >= max_steps:
                break
            torch.manual_seed(seed * 100_003 + epoch)
            model.train()
            sums: dict[str, float] = {}
            count = 0
            opt.zero_grad(set_to_none=True)
            for i, (x, y) in enumerate(data.batches("train", bs, shuffle=True, seed=seed * 100_003 + epoch)):
                if before_step is not None and i % cfg.grad_accum == 0:
                    before_step(step_offset + result.steps)
                loss, terms = loss_fn(model, x, y)
                loss_value = loss.detach()
                if not torch.isfinite(loss_value):
                    lr = opt.param_groups[0]["lr"]
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
                    raise TrainingDiverged(
                        f"loss became {loss_value.item()} at epoch {epoch}, step {result.steps} (terms: {shown}); "
                        f"try a lower learning rate (now {lr:.3g}) or full precision"
                    )
                (loss / cfg.grad_accum).backward()
                last = i + 1 == batches_per_epoch
                if (i + 1) % cfg.grad_accum == 0 or last:
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    result.steps += 1
                    stepped = True
                else:
                    stepped = False
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(y)
                count += len(y)
                advance(1, epoch=epoch, loss=loss_value.item())
                if (
                    stepped
                    and eval_every_steps is not None
                    and eval_fn is not None
                    and (step_offset + result.steps) % eval_every_steps == 0
                ):
                    was = model.training
                    ev = {f"val_{k}": v for k, v in eval_fn(model).items()}
                    model.train(was)
                    at = float(step_offset + result.steps)
                    result.step_evals.append({"step": at, "epoch": float(epoch), **ev})
                if stepped and max_steps is not None and result.steps >= max_steps:
                    break
            row: dict[str, float] = {
                "epoch": float(epoch),
                "step": float(step_offset + result.steps),
                **{k: v / max(1, count) for k, v in sums.items()},
            }
            if eval_fn is not None:
                row.update({f"val_{k}": v for k, v in eval_fn(model).items()})
            result.history.append(row)
            if checkpoint is not None:
                atomic_torch_save(
                    {
                        "key": key,
                        "epoch": epoch,
                        "steps": result.steps,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(),
                        "history": result.history,
                        "step_evals": result.step_evals,
                    },
                    checkpoint,
                )
    if checkpoint is not None and os.environ.get("COMPRESS_KEEP_EPOCH_CKPT") != "1":
        checkpoint.unlink(missing_ok=True)
    return result


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``inputs`` (eval mode, no grad)."""
    was = model.training
    model.eval()
    outs = [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, data: TaskData, split: str = "val", *, batch_size: int = 512) -> dict[str, float]:
    """Top-1 accuracy and mean CE of ``model`` on ``split``."""
    x, y = data.tensors(split)
    logits = predict(model, x, batch_size=batch_size)
    acc = (logits.argmax(-1) == y).float().mean().item()
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    return {"accuracy": acc, "loss": ce}


def metrics_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter count of ``model``."""
    return {"params": int(sum(p.numel() for p in model.parameters()))}
