"""Training settings shared by every stage that trains (finetune, distill, prune recovery, qat)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.config.base import CompressConfig


class TrainConfig(CompressConfig):
    """Optimizer, schedule and loop settings.

    Every field has a default, so ``train: {}`` is valid.
    """

    epochs: int = Field(10, ge=0, le=10_000, description="Passes over the training split.")
    lr: float = Field(1e-3, gt=0, le=10.0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="Decoupled weight decay (not on biases/norms).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adamw).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warm-up."
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear warm-up.")
    batch_size: int | None = Field(None, ge=1, description="Batch size; default: data.batch_size.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip gradient norm to this; null disables.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train: auto = the GPU when there is one, else the CPU."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Mixed precision on CUDA (autocast; fp16 adds loss scaling). The CPU always trains in fp32."
    )
