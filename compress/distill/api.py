"""Entry points of the distillation library: the distillation objective and students from teachers."""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.distill.config import LossesConfig
from compress.distill.objective import DistillObjective


def kd_objective(teacher: nn.Module, losses: LossesConfig, **options: Any) -> DistillObjective:
    """The ``DistillObjective`` of ``losses``: ``loss_fn(model, x, y)`` for ``compress.train.fit``.

    With the default losses this is ``0.9 · KD(T = 4) + 0.1 · CE``. The teacher is kept as a
    frozen deep copy inside the objective (eval mode, no grad), so the caller's teacher is
    never changed. Feature terms (``hidden``, ``attention_scores``, ``minilm``, ``minilmv2``,
    ``cosine``) need ``student`` and ``example_inputs`` to build their learned projections.

    Args:
        teacher: The teacher model.
        losses: Terms and weights.
        **options: ``DistillObjective``'s keywords: ``student``, ``example_inputs``,
            ``steps_per_epoch``, ``yaml_path``.

    Returns:
        The objective (an ``nn.Module``; train its parameters that require grad with the student).

    Raises:
        ConfigError: The losses do not fit the models.

    Example:
        >>> loss_fn = kd_objective(teacher, LossesConfig())  # doctest: +SKIP
        >>> loss, terms = loss_fn(student, x, y)  # doctest: +SKIP
    """
    return DistillObjective(teacher, losses, **options)
