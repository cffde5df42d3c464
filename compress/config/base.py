"""Base class of every compress config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CompressConfig(BaseModel):
    """Strict, immutable config: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
