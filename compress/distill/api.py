"""Entry points of the distillation library: the KD+CE objective and students from teachers."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compress.distill.config import LossesConfig
from compress.distill.losses import kd_loss
from compress.train.loop import LossFn


def kd_objective(teacher: nn.Module, losses: LossesConfig) -> LossFn:
    """``loss_fn(model, x, y)`` = kd.weight · KD(student, teacher) + ce.weight · CE(student, y).

    The teacher runs in eval mode under ``no_grad`` on the same batch.
    """
    teacher.eval()

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x)
        total = logits.new_zeros(())
        terms: dict[str, float] = {}
        if losses.kd is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            kd = kd_loss(logits, t_logits, losses.kd.temperature)
            total = total + losses.kd.weight * kd
            terms["kd"] = kd.item()
        if losses.ce is not None:
            ce = F.cross_entropy(logits, y)
            total = total + losses.ce.weight * ce
            terms["ce"] = ce.item()
        return total, terms

    return loss_fn


def student_by_depth(teacher: nn.Module, keep_layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` keeping only the blocks ``keep_layers`` (in that order).

    DistilBERT-style initialisation: every kept block, the embeddings and the head
    start from the teacher's weights. The model must keep its blocks in a
    ``blocks`` ``nn.ModuleList``.

    Raises:
        ValueError: An index is out of range or the model has no ``blocks``.
    """
    blocks = getattr(teacher, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(teacher).__name__} has no 'blocks' ModuleList; depth students need one")
    bad = [i for i in keep_layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"keep_layers {bad} out of range: the teacher has {len(blocks)} blocks (0..{len(blocks) - 1})")
    student = copy.deepcopy(teacher)
    student.blocks = nn.ModuleList(copy.deepcopy(blocks[i]) for i in keep_layers)
    return student
