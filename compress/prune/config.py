"""Structured pruning settings (the ``prune`` stage's pruning fields).

Structured pruning removes whole attention heads (keeping each head's width)
and whole FFN hidden neurons, so the result is a plain, smaller model of the
same family: no masks, no sparse kernels. The residual width (the model
dimension), the patch embedding and the classifier are never pruned in this
form.

How much is removed is given as a MAC target: ``target.macs`` is the fraction
of the model's multiply-accumulates (attention matmuls included, counted by
``compress.models.stats.count_macs``) to remove. Pruning proceeds in
``iterative_steps`` steps on a linear schedule (step ``s`` of ``n`` removes
``target.macs * s / n`` of the original MACs), optionally with recovery
training between steps. Each step searches the pruning ratio so that the MACs
land on the schedule; after the last step they are within ``tolerance`` of the
target, or pruning fails with an error that says what is reachable.

Which channels go is decided by an importance criterion scored over each
coupled group (torch-pruning's dependency graph):

* ``magnitude``: group L2 norm of the weights (``GroupMagnitudeImportance(p=2)``);
  needs no data.
* ``taylor``: first-order Taylor score ``|w * dL/dw|`` summed over the group
  (``GroupTaylorImportance``); needs a ``score_fn`` that returns a loss on
  calibration data.

Example YAML (inside a pipeline's ``stages:``)::

    - prune:
        target: {macs: 0.5}
        importance: taylor
        iterative_steps: 3
        round_to: 8
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.config.base import CompressConfig

MAX_MACS_TARGET = 0.95
"""Upper bound (exclusive) of ``target.macs``."""


class MacsTargetConfig(CompressConfig):
    """How much compute to remove."""

    macs: float = Field(
        gt=0,
        lt=MAX_MACS_TARGET,
        description="Fraction of the model's MACs to remove, in (0, 0.95); 0.5 halves the compute.",
    )


class PruneConfig(CompressConfig):
    """Structured pruning of attention heads and FFN neurons to a MAC target.

    Example:
        >>> cfg = PruneConfig(target={"macs": 0.3}, importance="taylor", round_to=8)
        >>> cfg.iterative_steps, PruneConfig().target.macs
        (3, 0.5)
    """

    target: MacsTargetConfig = Field(
        default_factory=lambda: MacsTargetConfig(macs=0.5),
        description="How much compute to remove; default {macs: 0.5} halves the MACs.",
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude",
        description="Channel importance: 'magnitude' (group L2 of weights) or 'taylor' "
        "(|w·grad| on calibration data).",
    )
    iterative_steps: int = Field(
        3, ge=1, le=100, description="Pruning steps on a linear schedule, with recovery after each."
    )
    prune_heads: bool = Field(True, description="Remove whole attention heads (head width is kept).")
    prune_ffn: bool = Field(True, description="Remove FFN hidden neurons.")
    round_to: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Keep FFN widths a multiple of this (e.g. 8 for tensor cores); null: any.",
    )
    ignored_layers: list[str] = Field(
        default_factory=list,
        description="Module-name glob patterns never pruned, e.g. 'blocks.0.*'; the patch embedding and "
        "classifier are always kept.",
    )
    global_ranking: bool = Field(
        False,
        description="Rank heads and neurons across all layers (layers shrink unevenly) instead of the same "
        "ratio in every layer.",
    )
    tolerance: float = Field(
        0.02,
        gt=0,
        le=0.1,
        description="Largest allowed gap between the MACs removed and target.macs (fraction).",
    )

    @model_validator(mode="after")
    def _something_to_prune(self) -> PruneConfig:
        if not self.prune_heads and not self.prune_ffn:
            raise ValueError(
                "prune_heads and prune_ffn are both false: nothing can be pruned; enable at least one"
            )
        bad = [p for p in self.ignored_layers if not p.strip()]
        if bad:
            raise ValueError("ignored_layers holds an empty pattern; use module names such as 'blocks.0.*'")
        return self
