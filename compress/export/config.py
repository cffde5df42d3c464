"""Export settings shared by the export library and the ``export`` stage: formats and parity tolerances.

A parity check runs each exported file with ONNX Runtime (CPU) and compares
it with the torch model it came from on a data split (see
``compress.export.parity``). Tolerances are per precision, because an FP32
file should match to float rounding while an INT8 file is compared with the
fake-quant torch model it was written from (same integer grid, different
kernels).

Example (YAML, under an ``export`` stage)::

    tolerances:
      fp32: {max_abs_error: 1.0e-4, min_top1_agreement: 0.999}
      int8: {min_top1_agreement: 0.98}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.config.base import CompressConfig

ExportFormat = Literal["onnx-fp32", "onnx-int8", "onnx-int8-u8", "tensorrt-fp16", "tensorrt-int8", "torch-fp32"]
"""``onnx-fp32``: float ONNX; ``onnx-int8``: INT8 Q/DQ, signed activations (TensorRT);
``onnx-int8-u8``: INT8 Q/DQ, uint8 activations with zero point 128 (ONNX Runtime on x86 CPUs)."""


class ParityToleranceConfig(CompressConfig):
    """Limits on the difference between an exported file and its torch source; null disables a check."""

    max_abs_error: float | None = Field(
        None, gt=0, description="Largest allowed |onnx - torch| over all logits."
    )
    min_top1_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest allowed fraction of examples with the same top-1 class."
    )
    min_cosine: float | None = Field(
        None, ge=-1, le=1, description="Smallest allowed mean per-example cosine similarity of the logits."
    )


class ParityTolerancesConfig(CompressConfig):
    """Parity tolerances by artifact precision."""

    fp32: ParityToleranceConfig = Field(
        default_factory=lambda: ParityToleranceConfig(max_abs_error=1e-4, min_top1_agreement=0.999),
        description="FP32 files vs the torch model with quantization disabled.",
    )
    int8: ParityToleranceConfig = Field(
        default_factory=lambda: ParityToleranceConfig(min_top1_agreement=0.98),
        description="INT8 Q/DQ files vs the fake-quant torch model (same learned scales).",
    )


class TensorRTExportConfig(CompressConfig):
    """How ``tensorrt-*`` engines are built (``compress.export.tensorrt``)."""

    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32], min_length=1, description="Batch sizes the engine's profile covers (min..max)."
    )
    workspace_mb: int = Field(2048, ge=16, le=1 << 20, description="Builder workspace limit in MB.")
    timing_cache: bool = Field(True, description="Reuse tactic timings across builds (artifacts/tensorrt.timing-cache).")
