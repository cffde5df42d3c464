"""Export settings shared by the export library and the ``export`` stage: formats and parity tolerances.

A parity check runs each exported file with ONNX Runtime (CPU) and compares
it with the torch model it came from on a data split (see
``compress.export.parity``). Tolerances are per precision, because an FP32
file should match to float rounding, an FP16 file to float16 rounding (about
1e-3 relative per operation, so no absolute limit: logit scales differ by
model), while an INT8 file is compared with the fake-quant torch model it was
written from (same integer grid, different kernels).

Example (YAML, under an ``export`` stage)::

    tolerances:
      fp32: {max_abs_error: 1.0e-4, min_top1_agreement: 0.999}
      fp16: {min_top1_agreement: 0.99, min_cosine: 0.999}
      int8: {min_top1_agreement: 0.98}
    fp16: {keep_fp32_ops: [Pow, ReduceMean]}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compress.config.base import CompressConfig

ExportFormat = Literal[
    "onnx-fp32",
    "onnx-fp16",
    "onnx-int8",
    "onnx-int8-u8",
    "onnx-int4",
    "onnx-int4-matmulnbits",
    "tensorrt-fp16",
    "tensorrt-int8",
    "torch-fp32",
]
"""``onnx-fp32``: float ONNX; ``onnx-fp16``: float16 weights and compute, float32 inputs and outputs;
``onnx-int8``: INT8 Q/DQ, signed activations (TensorRT);
``onnx-int8-u8``: INT8 Q/DQ, uint8 activations with zero point 128 (ONNX Runtime on x86 CPUs);
``onnx-int4``: INT4 weight-only, blocked DequantizeLinear, opset 21;
``onnx-int4-matmulnbits``: INT4 weight-only, ONNX Runtime's com.microsoft MatMulNBits."""


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
    fp16: ParityToleranceConfig = Field(
        default_factory=lambda: ParityToleranceConfig(min_top1_agreement=0.99, min_cosine=0.999),
        description="FP16 files (ONNX, TensorRT) vs the FP32 torch model: float16 rounding, looser.",
    )
    int8: ParityToleranceConfig = Field(
        default_factory=lambda: ParityToleranceConfig(min_top1_agreement=0.98),
        description="INT8 Q/DQ files vs the fake-quant torch model (same learned scales).",
    )
    int4: ParityToleranceConfig = Field(
        default_factory=lambda: ParityToleranceConfig(min_top1_agreement=0.99, min_cosine=0.9999),
        description="INT4 weight-only files vs the torch model holding the same INT4 weights "
        "(compress.export.int4.int4_model): float32 rounding only, so tight.",
    )


class Int4ExportConfig(CompressConfig):
    """How ``onnx-int4`` and ``onnx-int4-matmulnbits`` are written (``compress.export.int4``).

    Weights of ``nn.Linear`` layers become 4-bit codes with one scale per output channel and
    block of ``block_size`` input features. A layer with a QAT weight quantizer of at most 4
    bits keeps its learned codes and scale (exact); any other Linear is rounded to nearest.
    """

    block_size: int = Field(
        128,
        ge=16,
        le=1 << 16,
        description="Input features per scale: a power of two >= 16 (MatMulNBits' rule).",
    )
    keep_float: list[str] = Field(
        default_factory=list,
        description="Module-name patterns (fnmatch: head, blocks.*.qkv) whose Linear weights stay float32.",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            lo = 1 << (v.bit_length() - 1)
            raise ValueError(
                f"got {v}; expected a power of two >= 16 (MatMulNBits' rule): use {lo} or {lo * 2}"
            )
        return v


class TensorRTExportConfig(CompressConfig):
    """How ``tensorrt-*`` engines are built (``compress.export.tensorrt``)."""

    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32],
        min_length=1,
        description="Batch sizes the engine's profile covers (min..max).",
    )
    workspace_mb: int = Field(2048, ge=16, le=1 << 20, description="Builder workspace limit in MB.")
    timing_cache: bool = Field(
        True, description="Reuse tactic timings across builds (artifacts/tensorrt.timing-cache)."
    )


class Fp16ExportConfig(CompressConfig):
    """How ``onnx-fp16`` is converted from the FP32 graph (``compress.export.fp16``).

    Ops whose ONNX schema has no float16 form (``Range``, ``Resize`` scales...) are kept in
    float32 automatically; ``keep_fp32_ops`` is for numerics (an op whose float16 result
    overflows or loses too much). Empty by default: see ``compress.export.fp16``.
    """

    keep_fp32_ops: list[str] = Field(
        default_factory=list,
        description="ONNX op types computed in float32 (Cast nodes around them), e.g. [Pow, ReduceMean].",
    )

    @field_validator("keep_fp32_ops")
    @classmethod
    def _known_ops(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        import onnx.defs

        from compress._utils.registry import did_you_mean

        known = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")})
        bad = [f"'{op}'{did_you_mean(op, known)}" for op in v if op not in known]
        if bad:
            raise ValueError(
                f"unknown ONNX op type {', '.join(bad)}; expected op types such as Pow, ReduceMean, Resize"
            )
        return list(dict.fromkeys(v))
