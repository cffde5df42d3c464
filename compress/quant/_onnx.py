"""Export mode: quantizers that emit ONNX QuantizeLinear/DequantizeLinear nodes.

Why custom symbolics instead of ``torch.fake_quantize_per_*_affine``: the
TorchScript exporter (torch 2.13, ``dynamo=False``) evaluates a fake-quant op
whose input is a parameter or buffer at export time, so weights come out as
plain float constants without Q/DQ, and the op only accepts the 8-bit ranges.
Here each quantizer, while in export mode, runs a ``torch.autograd.Function``
whose ``symbolic`` writes exactly the nodes we want from the learned scales:

* weights: ``DequantizeLinear(int8 codes, scale, zero_point=0, axis)`` with the
  codes precomputed in torch by the same formula the fake-quant forward uses,
  so ONNX and torch hold bit-identical integer weights;
* activations (layer inputs, and the outputs of convolutions given an output
  quantizer): ``QuantizeLinear → DequantizeLinear`` per tensor, zero point
  int8 0 (``s8s8``) or uint8 128 (``u8s8``: the same grid shifted by 128, an
  exact re-encoding, since ``round(x/s) + 128`` saturated to [0, 255] equals
  the int8 code plus 128); below 8 bits a ``Clip`` to ``[qmin·s, qmax·s]``
  comes first so the int8/uint8 container holds only the narrower grid.

These nodes are the exact image of the fake-quant model, including the
output quantizers of residual convolutions (``quantize_residual_conv_outputs``).
For ``u8s8`` CNNs the exporter then gives the quantizers of ``Relu`` outputs
zero point 0 so ONNX Runtime fuses ``QLinearConv`` (``compress.export.qdq``);
export mode itself always emits the plain form.

The torch values computed in export mode equal the fake-quant forward's, so
tracing sees the same numbers the model was trained with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from compress.quant._fake_quant import FakeQuantizer, QuantConv2d, QuantLinear, QuantMatMul

ActivationDtype = Literal["int8", "uint8"]


@dataclass(frozen=True)
class _WeightPayload:
    codes: torch.Tensor  # int8, shape of the weight
    scale: torch.Tensor  # float32, [] or [out]
    axis: int | None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightDQ.apply(x, self)


@dataclass(frozen=True)
class _ActivationPayload:
    scale: torch.Tensor  # float32 []
    zero_point: int
    dtype: ActivationDtype
    qmin: int
    qmax: int
    bits: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return _ActivationQDQ.apply(x, self)


class _WeightDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: _WeightPayload) -> torch.Tensor:  # noqa: ARG004
        s = p.scale if p.axis is None else p.scale.reshape(-1, *([1] * (p.codes.dim() - 1)))
        return p.codes.to(torch.float32) * s

    @staticmethod
    def symbolic(g: Any, x: Any, p: _WeightPayload) -> Any:  # noqa: ARG004
        zp = torch.zeros(p.scale.shape, dtype=torch.int8)
        kwargs = {} if p.axis is None else {"axis_i": p.axis}
        return g.op(
            "DequantizeLinear",
            g.op("Constant", value_t=p.codes),
            g.op("Constant", value_t=p.scale),
            g.op("Constant", value_t=zp),
            **kwargs,
        )


class _ActivationQDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: _ActivationPayload) -> torch.Tensor:  # noqa: ARG004
        return torch.clamp(x / p.scale, p.qmin, p.qmax).round() * p.scale

    @staticmethod
    def symbolic(g: Any, x: Any, p: _ActivationPayload) -> Any:
        s = g.op("Constant", value_t=p.scale)
        zdtype = torch.uint8 if p.dtype == "uint8" else torch.int8
        z = g.op("Constant", value_t=torch.tensor(p.zero_point, dtype=zdtype))
        if p.bits < 8:
            lo = g.op("Constant", value_t=(p.scale * p.qmin).to(torch.float32))
            hi = g.op("Constant", value_t=(p.scale * p.qmax).to(torch.float32))
            x = g.op("Clip", x, lo, hi)
        q = g.op("QuantizeLinear", x, s, z)
        return g.op("DequantizeLinear", q, s, z)


def _act_payload(q: FakeQuantizer, dtype: ActivationDtype) -> _ActivationPayload:
    return _ActivationPayload(
        scale=q.effective_scale().detach().to(torch.float32).reshape(()).clone(),
        zero_point=128 if dtype == "uint8" else 0,
        dtype=dtype,
        qmin=q.qmin,
        qmax=q.qmax,
        bits=q.bits,
    )


def _weight_payload(q: FakeQuantizer, weight: torch.Tensor) -> _WeightPayload:
    codes, scale = q.export_weight(weight)
    return _WeightPayload(codes=codes.cpu(), scale=scale.to(torch.float32).cpu().clone(), axis=q.axis)


@contextlib.contextmanager
def onnx_export_mode(model: nn.Module, *, activation_dtype: ActivationDtype = "int8") -> Iterator[None]:
    """Put every quantizer of ``model`` in export mode for the duration of the block.

    Args:
        model: A prepared and calibrated model.
        activation_dtype: ``int8`` (zero point 0) or ``uint8`` (zero point 128) activation codes.

    Raises:
        ValueError: A quantizer is disabled or was never calibrated.
    """
    touched: list[FakeQuantizer] = []
    try:
        for name, m in model.named_modules():
            if isinstance(m, QuantLinear | QuantConv2d):
                pairs = [(m.weight_quantizer, m.weight), (m.input_quantizer, None)]
                if isinstance(m, QuantConv2d) and m.output_quantizer is not None:
                    pairs.append((m.output_quantizer, None))
            elif isinstance(m, QuantMatMul):
                pairs = [(m.a_quantizer, None), (m.b_quantizer, None)]
            else:
                continue
            for q, w in pairs:
                if not q.enabled:
                    raise ValueError(
                        f"{name}: quantizer is disabled; enable it (set_quant_enabled_) before an INT8 export"
                    )
                if not bool(q.calibrated):
                    raise ValueError(
                        f"{name}: quantizer was never calibrated; run calibrate_ before an INT8 export"
                    )
                q._export = _weight_payload(q, w) if w is not None else _act_payload(q, activation_dtype)
                touched.append(q)
        yield
    finally:
        for q in touched:
            q._export = None
