"""Distillation losses (METHODS.md §2). Each is a plain function on logits or features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)), summed over classes, mean over the batch.

    The T² factor keeps the soft-target gradient magnitude comparable across temperatures
    (arXiv 1503.02531). The teacher side is detached.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    p_t = F.softmax(teacher_logits.detach() / t, dim=-1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return kl * (t * t)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """−Σ softmax(z_T) · log softmax(z_S), mean over the batch (TinyBERT / TI prediction loss, T = 1)."""
    p_t = F.softmax(teacher_logits.detach(), dim=-1)
    return -(p_t * F.log_softmax(student_logits, dim=-1)).sum(-1).mean()
