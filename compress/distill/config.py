"""Distillation loss settings (the ``losses:`` mapping of a training stage)."""

from __future__ import annotations

from pydantic import Field, model_validator

from compress.config.base import CompressConfig


class KDLossConfig(CompressConfig):
    """Hinton KD term: ``weight · T² · KL(p_T ‖ p_S)``."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T.")
    weight: float = Field(0.9, ge=0, description="Weight of the KD term.")


class CELossConfig(CompressConfig):
    """Ground-truth cross-entropy term."""

    weight: float = Field(0.1, ge=0, description="Weight of the CE term.")


class LossesConfig(CompressConfig):
    """Which loss terms a training stage uses, and their weights (defaults: mdistiller's KD recipe)."""

    kd: KDLossConfig | None = Field(default_factory=KDLossConfig, description="Logit distillation; null disables.")
    ce: CELossConfig | None = Field(default_factory=CELossConfig, description="Label cross-entropy; null disables.")

    @model_validator(mode="after")
    def _some_term(self) -> LossesConfig:
        if self.kd is None and self.ce is None:
            raise ValueError("losses: both kd and ce are disabled; enable at least one")
        return self
