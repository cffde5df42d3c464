"""Quantization settings: the ``quant:`` mapping of a ``qat`` stage.

Weights are quantized per output channel (axis 0 of an ``nn.Linear`` weight
``[out, in]``), activations per tensor, both symmetric with zero point 0 on
the integer grid ``[-2^(b-1), 2^(b-1) - 1]`` ([-128, 127] for 8 bits), which
is what TensorRT's explicit quantization expects. Scales start from a
calibration pass (min-max: ``scale = amax / 127``, or a percentile of ``|x|``)
and are then learned with LSQ (Esser et al., arXiv 1902.08153) unless
``learn_scale`` is false.

Example:
    >>> cfg = QuantConfig.model_validate({"calibration": {"method": "percentile"}})
    >>> cfg.weights.bits, cfg.calibration.percentile
    (8, 99.99)

7-, 4- and 2-bit settings use the same code (grids ``[-64, 63]``, ``[-8, 7]``,
``[-2, 1]``); they export as int8 Q/DQ holding the narrower codes, so the file
is not smaller than 8 bits (a packed INT4 export needs opset 21). 7-bit weights
are ONNX Runtime's ``reduce_range``: its u8×s8 integer kernels on x86 CPUs
without VNNI (AVX2 only) add pairs of products in int16, which saturates for
8-bit weights (255·128·2 > 32767) and silently changes results; with 7-bit
weights (255·64·2 ≤ 32767) the ``onnx-int8-u8`` artifact runs exactly there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.config.base import CompressConfig

Bits = Literal[8, 7, 4, 2]


class WeightQuantConfig(CompressConfig):
    """How weights are fake-quantized (symmetric, zero point 0)."""

    bits: Bits = Field(
        8,
        description="Weight bit width; grid [-2^(b-1), 2^(b-1)-1]; "
        "7 = ORT reduce_range for x86 CPUs without VNNI.",
    )
    per_channel: bool = Field(
        True, description="One scale per output channel (axis 0 of [out, in]); false: one per tensor."
    )
    learn_scale: bool = Field(
        True, description="Learn the scales with LSQ; false keeps the calibrated scales fixed."
    )


class ActivationQuantConfig(CompressConfig):
    """How the inputs of quantized layers are fake-quantized (per tensor, symmetric, zero point 0)."""

    bits: Bits = Field(8, description="Activation bit width; grid [-2^(b-1), 2^(b-1)-1].")
    learn_scale: bool = Field(
        True, description="Learn the scales with LSQ; false keeps the calibrated scales fixed."
    )


class CalibrationConfig(CompressConfig):
    """How the initial activation scales are computed (weights always use their per-channel max)."""

    method: Literal["minmax", "percentile"] = Field(
        "minmax",
        description="minmax: amax = max |x| over the batches; "
        "percentile: mean over batches of a percentile of |x|.",
    )
    percentile: float = Field(
        99.99, gt=50, le=100, description="Percentile of |x| used by method 'percentile'."
    )
    batches: int = Field(
        4, ge=1, le=10_000, description="Training batches run through the model to calibrate."
    )


class QuantConfig(CompressConfig):
    """What ``prepare_qat`` inserts and how the scales are initialised and trained."""

    weights: WeightQuantConfig = Field(default_factory=WeightQuantConfig, description="Weight quantization.")
    activations: ActivationQuantConfig = Field(
        default_factory=ActivationQuantConfig, description="Activation (layer input) quantization."
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Scale initialisation."
    )
    quantize_attention_matmuls: bool = Field(
        True, description="Also quantize both inputs of the attention matmuls (Q·Kᵀ and probs·V)."
    )
