"""Distillation loss settings: the ``losses:`` mapping of a training stage (METHODS.md §2).

Each key is one loss term; ``null`` (or leaving the key out) disables it, a mapping
enables it with its settings. The total loss is ``Σ weight · term``. Defaults keep the
mdistiller KD recipe (``kd`` 0.9 at T = 4, ``ce`` 0.1); every other term is off.

Example (a ``distill`` stage)::

    losses:
      kd: {temperature: 4, weight: 0.9}
      ce: {weight: 0.1}
      hidden: {layer_map: uniform, weight: 1}            # TinyBERT hidden states
      attention_scores: {layer_map: uniform}             # TinyBERT attention scores
      minilmv2: {relation_heads: 12}                     # MiniLMv2 Q-Q, K-K, V-V relations

Layer numbering: hidden state 0 is the embedding output (where the architecture has one),
hidden state ``l`` the output of layer ``l`` (1-based); attention layers are ``1..L``.
``layer_map`` is ``uniform`` (student ``m`` ↔ teacher ``round(m·N/M)``, TinyBERT's
``m·k``, including 0 ↔ 0), ``last`` (``M`` ↔ ``N``) or explicit ``[[student, teacher], ...]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from compress.config.base import CompressConfig

LayerMap = Literal["uniform", "last"] | list[tuple[int, int]]
"""``uniform``, ``last`` or explicit ``(student, teacher)`` index pairs."""


def _check_pairs(v: Any) -> Any:
    if isinstance(v, list):
        if not v:
            raise ValueError(
                "layer_map is an empty list; give [[student, teacher], ...] pairs, or uniform / last"
            )
        bad = [list(p) for p in v if min(p) < 0]
        if bad:
            raise ValueError(f"layer_map pairs must be non-negative layer indices, got {bad}")
    return v


class KDLossConfig(CompressConfig):
    """Hinton KD term: ``weight · T² · KL(p_T ‖ p_S)`` (arXiv 1503.02531)."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T.")
    weight: float = Field(0.9, ge=0, description="Weight of the KD term.")


class CELossConfig(CompressConfig):
    """Ground-truth cross-entropy term."""

    weight: float = Field(0.1, ge=0, description="Weight of the CE term.")


class DKDLossConfig(CompressConfig):
    """Decoupled KD (arXiv 2203.08679): ``weight · min(epoch/warmup, 1) · (alpha·TCKD + beta·NCKD)``.

    Defaults are mdistiller's CIFAR-100 recipe (its ImageNet R34→R18 recipe: beta 0.5,
    T 1, warmup 1). That recipe also uses CE weight 1.0: set ``ce: {weight: 1.0}`` and
    ``kd: null`` to follow it.
    """

    alpha: float = Field(1.0, ge=0, description="Weight of TCKD (target vs non-target).")
    beta: float = Field(8.0, ge=0, description="Weight of NCKD (among non-target classes).")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T.")
    warmup: int = Field(20, ge=0, description="Linear warm-up length of the DKD term; 0 disables.")
    warmup_unit: Literal["epochs", "steps"] = Field("epochs", description="Unit of warmup.")
    weight: float = Field(1.0, ge=0, description="Weight of the DKD term.")


class HiddenLossConfig(CompressConfig):
    """Hidden-state MSE over mapped layers, summed over pairs (FitNets 1412.6550; TinyBERT 1909.10351).

    Where widths differ the student feature first goes through a learned projection:
    a ``Linear`` for token features (one per width pair, shared across layers like
    TinyBERT's ``fit_dense``), a 1x1 ``Conv2d`` + BatchNorm + ReLU for feature maps (one
    per pair, mdistiller's ``ConvReg`` at equal spatial size). The weight default 100 is
    mdistiller's FitNet weight (one hint layer); TinyBERT weighs its summed hidden loss 1.
    """

    weight: float = Field(100.0, ge=0, description="Weight of the term (FitNets/mdistiller: 100).")
    layer_map: LayerMap = Field(
        "uniform", description="uniform, last, or [[student, teacher], ...] hidden-state pairs."
    )
    student_layers: str | None = Field(
        None,
        description="Glob of student modules whose outputs are the hidden states; default: the layout's.",
    )
    teacher_layers: str | None = Field(
        None,
        description="Glob of teacher modules whose outputs are the hidden states; default: the layout's.",
    )
    projection: Literal["auto", "always", "none"] = Field(
        "auto", description="Learned student→teacher projection: where widths differ, always, or never."
    )

    @field_validator("layer_map")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        return _check_pairs(v)


class AttentionScoresLossConfig(CompressConfig):
    """TinyBERT attention loss: MSE of pre-softmax scores, padded keys zeroed, summed over mapped layers."""

    weight: float = Field(1.0, ge=0, description="Weight of the term.")
    layer_map: LayerMap = Field(
        "uniform", description="uniform, last, or [[student, teacher], ...] attention-layer pairs (1-based)."
    )

    @field_validator("layer_map")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        return _check_pairs(v)


class MiniLMLossConfig(CompressConfig):
    """MiniLM (arXiv 2002.10957): last-layer attention KL + value-relation KL; head counts must match."""

    weight: float = Field(1.0, ge=0, description="Weight of the term.")
    attention_weight: float = Field(
        1.0, ge=0, description="Weight of the attention-distribution KL inside the term."
    )
    value_weight: float = Field(1.0, ge=0, description="Weight of the value-relation KL inside the term.")


class MiniLMv2LossConfig(CompressConfig):
    """MiniLMv2 (arXiv 2012.15828): Q-Q, K-K, V-V self-attention relations over ``relation_heads`` heads."""

    weight: float = Field(1.0, ge=0, description="Weight of the term.")
    relation_heads: int | None = Field(
        None,
        ge=1,
        description="Relation heads A_r (must divide both attention widths); default: the teacher's heads.",
    )
    teacher_layer: int | None = Field(
        None,
        ge=1,
        description="Teacher attention layer (1-based); default: the last (upper-middle also works).",
    )
    student_layer: int | None = Field(
        None, ge=1, description="Student attention layer (1-based); default: the last."
    )
    qq: float = Field(1.0, ge=0, description="Weight of the Q-Q relation.")
    kk: float = Field(1.0, ge=0, description="Weight of the K-K relation.")
    vv: float = Field(1.0, ge=0, description="Weight of the V-V relation.")


class CosineLossConfig(CompressConfig):
    """DistilBERT cosine loss on the last hidden states (arXiv 1910.01108); widths must match."""

    weight: float = Field(1.0, ge=0, description="Weight of the term (DistilBERT README: 1.0).")


FEATURE_TERMS = ("hidden", "attention_scores", "minilm", "minilmv2", "cosine")
"""Terms that read features through a layout (they need the student when the objective is built)."""

_ADDED_TERMS = ("dkd", *FEATURE_TERMS)


class LossesConfig(CompressConfig):
    """Which loss terms a training stage uses, and their weights (defaults: mdistiller's KD recipe)."""

    added_later = _ADDED_TERMS  # terms added after kd/ce: configs written before them keep their dump

    kd: KDLossConfig | None = Field(
        default_factory=KDLossConfig, description="Logit distillation; null disables."
    )
    ce: CELossConfig | None = Field(
        default_factory=CELossConfig, description="Label cross-entropy; null disables."
    )
    dkd: DKDLossConfig | None = Field(None, description="Decoupled KD (TCKD + NCKD); null disables.")
    hidden: HiddenLossConfig | None = Field(
        None, description="Hidden-state MSE with a layer map and learned projections; null disables."
    )
    attention_scores: AttentionScoresLossConfig | None = Field(
        None, description="TinyBERT attention-score MSE; null disables."
    )
    minilm: MiniLMLossConfig | None = Field(
        None, description="MiniLM attention + value-relation KL; null disables."
    )
    minilmv2: MiniLMv2LossConfig | None = Field(
        None, description="MiniLMv2 Q/K/V relation KL with relation heads; null disables."
    )
    cosine: CosineLossConfig | None = Field(
        None, description="DistilBERT cosine loss on the last hidden states; null disables."
    )

    @model_validator(mode="after")
    def _some_term(self) -> LossesConfig:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("losses: every term is disabled; enable at least one (e.g. kd or ce)")
        return self

    @property
    def feature_terms(self) -> list[str]:
        """The enabled terms that need hooked features."""
        return [n for n in FEATURE_TERMS if getattr(self, n) is not None]
