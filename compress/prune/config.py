"""Structured pruning settings (the ``prune`` stage's pruning fields).

Full user guide: docs/pruning.md.

Structured pruning removes whole attention heads (keeping each head's width)
and whole FFN hidden neurons, so the result is a plain, smaller model of the
same family: no masks, no sparse kernels. The residual width (the model
dimension), the patch embedding and the classifier are never pruned in this
form.

CNNs (torchvision / timm ResNets and other models without attention) lose whole
channels of every coupled group instead (residual sums, BatchNorms and readers
together); Hugging Face BERT-family models and timm ViTs lose heads and FFN
neurons like tiny-vit; ``layers: {drop: N}`` also removes the ``N`` least
important whole layers of the layer stack first.

How much is removed is given by ``target``: exactly one of ``macs``,
``params`` (fractions to remove) or ``latency`` (a p95 budget on a deploy
target, met by pruning further in steps). ``target.macs`` is the fraction
of the model's multiply-accumulates (attention matmuls included, counted by
``compress.models.stats.count_macs``) to remove. Pruning proceeds in
``iterative_steps`` steps on a linear schedule (step ``s`` of ``n`` removes
``target.macs * s / n`` of the original MACs), optionally with recovery
training between steps. Each step searches the pruning ratio so that the MACs
land on the schedule; after the last step they are within ``tolerance`` of the
target, or pruning fails with an error that says what is reachable.

Which channels go is decided by an importance criterion scored over each
coupled group (torch-pruning's dependency graph):

* ``magnitude``: group Lp norm of the weights (``GroupMagnitudeImportance(p)``,
  ``p: 1`` or ``2``); needs no data.
* ``taylor``: first-order Taylor score ``|w * dL/dw|`` summed over the group
  (``GroupTaylorImportance``); needs a ``score_fn`` that returns a loss on
  calibration data.
* ``bn_scale``: ``|gamma|`` of the BatchNorm after each convolution (network
  slimming); CNNs only.
* ``head_gate``: attention heads by ``|dL/dgate|`` of a multiplicative gate of
  1.0 on each head's context, accumulated over calibration batches (Michel et
  al. 2019); FFN neurons and other channels fall back to ``taylor``.

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


class LatencyBudgetConfig(CompressConfig):
    """A latency budget on a deploy target: prune further in steps until it holds."""

    target: str = Field(
        min_length=1, description="Deploy target name (a file stem in deploy/), e.g. cpu-ort-fp32."
    )
    batch: int = Field(1, ge=1, le=65536, description="Batch size the budget applies to.")
    p95_ms: float = Field(gt=0, description="Largest allowed p95 latency in milliseconds at that batch.")
    step: float = Field(
        0.1, gt=0, le=0.5, description="MAC fraction removed per search step before measuring again."
    )
    max_macs: float = Field(
        0.9,
        gt=0,
        lt=MAX_MACS_TARGET,
        description="Largest MAC fraction the search may remove before giving up.",
    )


class PruneTargetConfig(CompressConfig):
    """How much to remove: exactly one of ``macs``, ``params`` or ``latency``."""

    macs: float | None = Field(
        None,
        gt=0,
        lt=MAX_MACS_TARGET,
        description="Fraction of the model's MACs to remove, in (0, 0.95); 0.5 halves the compute.",
    )
    params: float | None = Field(
        None,
        gt=0,
        lt=MAX_MACS_TARGET,
        description="Fraction of the model's parameters to remove, in (0, 0.95).",
    )
    latency: LatencyBudgetConfig | None = Field(
        None,
        description="p95 latency budget on a deploy target; the stage measures candidates until it holds.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PruneTargetConfig:
        given = [k for k in ("macs", "params", "latency") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"target: give exactly one of target.macs, target.params or target.latency (got "
                f"{', '.join(given) or 'none'}), e.g. target: {{macs: 0.5}}"
            )
        return self

    @property
    def metric(self) -> str:
        """``macs`` or ``params``: what the planner prices (a latency target searches over MACs)."""
        return "params" if self.params is not None else "macs"

    @property
    def fraction(self) -> float | None:
        """The fraction of ``metric`` to remove; None for a latency target."""
        return self.params if self.params is not None else self.macs


MacsTargetConfig = PruneTargetConfig
"""Former name of ``PruneTargetConfig`` (kept for imports)."""


class LayerDropConfig(CompressConfig):
    """Whole layers of the layer stack to drop, least important first."""

    drop: float = Field(
        gt=0,
        description="Layers to drop: an integer count (>= 1) or a fraction of the stack in (0, 1).",
    )

    @model_validator(mode="after")
    def _count_or_fraction(self) -> LayerDropConfig:
        if self.drop >= 1 and self.drop != int(self.drop):
            raise ValueError(f"layers.drop: got {self.drop}; give a whole count (e.g. 2) or a fraction < 1")
        return self

    def count(self, n_layers: int) -> int:
        """How many of ``n_layers`` layers go."""
        return int(self.drop) if self.drop >= 1 else int(round(self.drop * n_layers))


class PruneConfig(CompressConfig):
    """Structured pruning of attention heads and FFN neurons to a MAC target.

    Example:
        >>> cfg = PruneConfig(target={"macs": 0.3}, importance="taylor", round_to=8)
        >>> cfg.iterative_steps, PruneConfig().target.macs
        (3, 0.5)
    """

    target: PruneTargetConfig = Field(
        default_factory=lambda: PruneTargetConfig(macs=0.5),
        description="How much to remove: {macs: f}, {params: f} or {latency: {target, batch, p95_ms}}; "
        "default {macs: 0.5} halves the MACs.",
    )
    importance: Literal["magnitude", "taylor", "bn_scale", "head_gate"] = Field(
        "magnitude",
        description="Channel importance: 'magnitude' (group Lp norm of weights), 'taylor' "
        "(|w·grad| on calibration data), 'bn_scale' (|BatchNorm gamma|, CNNs) or 'head_gate' "
        "(|dL/dgate| per attention head, Taylor for the rest).",
    )
    p: Literal[1, 2] = Field(2, description="Norm of importance: magnitude (1 = L1, 2 = L2).")
    layers: LayerDropConfig | None = Field(
        None, description="Drop whole layers of the layer stack first, e.g. {drop: 2} or {drop: 0.25}."
    )
    iterative_steps: int = Field(
        3, ge=1, le=100, description="Pruning steps on a linear schedule, with recovery after each."
    )
    prune_heads: bool = Field(True, description="Remove whole attention heads (head width is kept).")
    prune_ffn: bool = Field(True, description="Remove FFN hidden neurons (in CNNs: channels).")
    round_to: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Keep FFN / channel widths a multiple of this (e.g. 8 for tensor cores); null: any.",
    )
    ignored_layers: list[str] = Field(
        default_factory=list,
        description="Module-name glob patterns never pruned, e.g. 'blocks.0.*'; the patch embedding and "
        "the classifier's outputs are always kept.",
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
        description="Largest allowed gap between the fraction removed and target.macs / target.params.",
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
