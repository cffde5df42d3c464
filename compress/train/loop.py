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

from compress._utils.interrupt import check_interrupt
from compress._utils.io import atomic_torch_save, sha256_json
from compress._utils.progress import SILENT, Reporter
from compress.data.base import TaskData
from compress.errors import TrainingDiverged
from compress.train import distributed as dist_utils
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


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The training device of ``cfg`` for this process (``auto``: CUDA when available)."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from compress.errors import BadInputError

        raise BadInputError("train.device: cuda, but torch sees no CUDA device here; use device: auto or cpu")
    return dist_utils.local_device(name)


def _trainable(loss_fn: Any) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters a loss object owns (e.g. the projections of hidden-state distillation)."""
    if not isinstance(loss_fn, nn.Module):
        return []
    return [(n, p) for n, p in loss_fn.named_parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, cfg: TrainConfig, extra: list[tuple[str, nn.Parameter]] = ()) -> torch.optim.Optimizer:  # type: ignore[assignment]
    """AdamW or SGD with weight decay on weight matrices only (not biases, norms, scales).

    ``extra``: further named parameters to train (owned by the loss), grouped the same way.
    """
    decay, no_decay = [], []
    for name, p in [*model.named_parameters(), *extra]:
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
    device = resolve_device(cfg)
    world, rank = dist_utils.world_size(), dist_utils.rank()
    model.to(device)
    if hasattr(loss_fn, "to"):
        loss_fn.to(device)
    extra = _trainable(loss_fn)
    opt = make_optimizer(model, cfg, extra)
    sched = make_schedule(opt, cfg, total)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
    train_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    result = FitResult()
    key_fields: dict[str, Any] = {"cfg": cfg.model_dump(), "bs": bs, "seed": seed, "epochs": n_epochs}
    if max_steps is not None or eval_every_steps is not None or step_offset:
        key_fields.update(max_steps=max_steps, eval_every_steps=eval_every_steps, step_offset=step_offset)
    key = sha256_json(key_fields)
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location=device, weights_only=True)
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            if extra:
                loss_fn.load_state_dict(ck["loss"], strict=False)
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["schedule"])
            start_epoch = int(ck["epoch"]) + 1
            result.history = [dict(h) for h in ck["history"]]
            result.steps = int(ck["steps"])
            result.step_evals = [dict(r) for r in ck.get("step_evals", [])]
            result.resumed_from_epoch = start_epoch
            reporter.line(f"  resuming {description} from epoch {start_epoch}/{n_epochs}")
    params = [p for p in model.parameters() if p.requires_grad] + [p for _, p in extra]
    with reporter.task(description, total=max(0, (n_epochs - start_epoch) * batches_per_epoch)) as advance:
        for epoch in range(start_epoch, n_epochs):
            if max_steps is not None and result.steps >= max_steps:
                break
            torch.manual_seed(seed * 100_003 + epoch)
            model.train()
            sums: dict[str, float] = {}
            count = 0
            opt.zero_grad(set_to_none=True)
            batches = data.batches("train", bs, shuffle=True, seed=seed * 100_003 + epoch, device=device)
            for i, (x, y) in enumerate(batches):
                check_interrupt()
                if before_step is not None and i % cfg.grad_accum == 0:
                    before_step(step_offset + result.steps)
                x, y, share = _shard(x, y, rank, world)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, terms = loss_fn(train_model, x, y)
                loss = loss.float() * share
                loss_value = loss.detach() / share if share else loss.detach()
                if not torch.isfinite(loss_value):
                    lr = opt.param_groups[0]["lr"]
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
                    raise TrainingDiverged(
                        f"loss became {loss_value.item()} at epoch {epoch}, step {result.steps} (terms: {shown}); "
                        f"try a lower learning rate (now {lr:.3g}) or full precision"
                    )
                scaled = loss / cfg.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                last = i + 1 == batches_per_epoch
                if (i + 1) % cfg.grad_accum == 0 or last:
                    if world > 1 and extra:
                        _all_reduce_mean([p for _, p in extra], world)  # DDP syncs only the model's grads
                    if scaler is not None:
                        scaler.unscale_(opt)
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
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
            if checkpoint is not None and rank == 0:
                atomic_torch_save(
                    {
                        "key": key,
                        "epoch": epoch,
                        "steps": result.steps,
                        "model": model.state_dict(),
                        "loss": {n: p.detach() for n, p in extra},
                        "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(),
                        "history": result.history,
                        "step_evals": result.step_evals,
                    },
                    checkpoint,
                )
            dist_utils.barrier()
    if checkpoint is not None and rank == 0 and os.environ.get("COMPRESS_KEEP_EPOCH_CKPT") != "1":
        checkpoint.unlink(missing_ok=True)
    dist_utils.barrier()
    model.to("cpu")
    if hasattr(loss_fn, "to"):
        loss_fn.to("cpu")
    return result


def _all_reduce_mean(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of parameters outside the DDP-wrapped model (a loss's projections) over the ranks."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's part of a global batch, and the weight that makes the ranks' averaged gradient
    equal the full batch's (``len(part) * world / len(batch)``). A rank left without examples runs
    one example at weight 0, so every rank joins the gradient all-reduce."""
    if world == 1:
        return x, y, 1.0
    n = len(y)
    lo, hi = (n * rank) // world, (n * (rank + 1)) // world
    if hi == lo:
        return x[:1], y[:1], 0.0
    return x[lo:hi], y[lo:hi], (hi - lo) * world / n


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``inputs`` (eval mode, no grad), computed on the model's device, returned on the CPU."""
    was = model.training
    model.eval()
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    outs = [model(inputs[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(inputs), batch_size)]
    model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(
    model: nn.Module, data: TaskData, split: str = "val", *, batch_size: int = 512, device: str = "auto"
) -> dict[str, float]:
    """Top-1 accuracy, macro accuracy (mean of per-class recalls) and mean CE of ``model`` on ``split``.

    ``device``: where to compute (``auto``: the model's device, or CUDA when the model is on the
    CPU and a GPU exists; the model is moved back afterwards).
    """
    x, y = data.tensors(split)
    p = next(model.parameters(), None)
    home = p.device if p is not None else torch.device("cpu")
    target = home
    if device == "auto" and home.type == "cpu" and torch.cuda.is_available():
        target = torch.device("cuda")
    elif device not in ("auto",):
        target = torch.device(device)
    moved = target != home
    if moved:
        model.to(target)
    try:
        logits = predict(model, x, batch_size=batch_size)
    finally:
        if moved:
            model.to(home)
    return classification_metrics(logits, y, num_classes=data.num_classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> dict[str, float]:
    """``accuracy`` (micro), ``macro_accuracy`` (mean recall over the classes present) and ``loss`` (CE)."""
    pred = logits.argmax(-1)
    correct = (pred == labels).float()
    acc = correct.mean().item() if len(labels) else float("nan")
    per_class = torch.zeros(num_classes).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    macro = (per_class[present] / counts[present]).mean().item() if present.any() else float("nan")
    ce = torch.nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    return {"accuracy": acc, "macro_accuracy": macro, "loss": ce}


def metrics_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter count of ``model``."""
    return {"params": int(sum(p.numel() for p in model.parameters()))}
