"""Fake quantizers trained with LSQ, and the layers that carry them.

A ``FakeQuantizer`` maps ``x`` to ``round(clip(x / s, qmin, qmax)) · s`` with
a straight-through estimator for ``round`` and the LSQ step-size gradient
(Esser et al., arXiv 1902.08153): inside the clip range
``∂x̂/∂s = round(x/s) - x/s``, below it ``qmin``, above it ``qmax``, and the
gradient reaching ``s`` is multiplied by ``g = 1 / sqrt(N · qmax)``. Both
come out of autograd from the forward written below, so there is no custom
backward to get wrong.

The learned parameter is ``log_scale`` (the step size is ``exp(log_scale)``,
clamped below by ``_EPS``), as in TQT (Jain et al., arXiv 1903.08066, which
trains log thresholds). Two reasons: the step is strictly positive without a
clamp that could trap it, and Adam, which normalises each parameter's update to
about ``lr``, then changes a step *relatively*. With the step itself as the
parameter, AdamW at the QAT default lr 5e-4 moves 8-bit weight steps of about
2e-3 by ~25% per update (measured on tiny-vit/digits: weight steps doubled in
three epochs), which LSQ's gradient scale ``g`` cannot prevent because Adam
divides it out. The gradient reaching ``log_scale`` is LSQ's ``g · ∂L/∂s``
times ``s`` (chain rule); its sign is LSQ's.

A quantizer has four modes: disabled (identity, for exact FP comparisons and
Teacher Intervention), observing (identity that records statistics for
calibration), fake-quant (training and evaluation) and export (emits ONNX
Q/DQ, see ``compress.quant._onnx``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from compress._utils.registry import Registry
from compress.models.layers import MatMul
from compress.quant.config import ActivationQuantConfig, CalibrationConfig, QuantConfig, WeightQuantConfig

_EPS = 1e-8
"""Smallest effective scale; keeps ``x / s`` finite for a scale driven to zero."""

Role = Literal["weight", "activation"]

_MSE_CANDIDATES = 64
"""Clip candidates tried per batch by MSE calibration: ``amax · k / 64`` for ``k = 1..64``."""

_MSE_MAX_ELEMENTS = 1 << 18
"""MSE calibration evaluates at most this many elements per batch (an even stride through the tensor)."""


def int_range(bits: int) -> tuple[int, int]:
    """The symmetric signed grid ``(qmin, qmax) = (-2^(b-1), 2^(b-1) - 1)``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``g`` (LSQ's step-size gradient scale)."""
    y = x * g
    return (x - y).detach() + y


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear) with an identity gradient."""
    return (x.round() - x).detach() + x


def lsq_fake_quant(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``round(clip(x / scale, qmin, qmax)) · scale`` with STE rounding.

    Args:
        x: Values to quantize.
        scale: Positive step size, broadcastable to ``x``.
        qmin: Lowest integer code.
        qmax: Highest integer code.

    Returns:
        The fake-quantized values. The gradient to ``x`` is 1 inside the clip
        range and 0 outside; the gradient to ``scale`` is LSQ's.
    """
    return _round_ste(torch.clamp(x / scale, qmin, qmax)) * scale


class FakeQuantizer(nn.Module):
    """Symmetric fake quantizer with a (learnable) step size.

    Args:
        role: ``weight`` (statistics from the tensor itself, max of ``|w|``) or
            ``activation`` (statistics per the calibration method).
        bits: Bit width; the grid is ``[-2^(b-1), 2^(b-1) - 1]``.
        channels: Number of per-channel scales along axis 0, or ``None`` for one scale.
        learn_scale: Whether ``scale`` receives gradients.
        method: Calibration statistic for activations (``minmax``, ``percentile`` or ``mse``).
        percentile: Percentile of ``|x|`` for ``method="percentile"``.

    Example:
        >>> q = FakeQuantizer(role="activation", bits=8)
        >>> calibrate_quantizer_(q, [torch.tensor([-1.0, 0.5, 2.54])])
        >>> round(q.effective_scale().item(), 4)
        0.02
    """

    def __init__(
        self,
        *,
        role: Role,
        bits: int = 8,
        channels: int | None = None,
        learn_scale: bool = True,
        method: Literal["minmax", "percentile", "mse"] = "minmax",
        percentile: float = 99.99,
    ) -> None:
        super().__init__()
        self.role = role
        self.bits = bits
        self.qmin, self.qmax = int_range(bits)
        self.axis: int | None = 0 if channels is not None else None
        self.method = method if role == "activation" else "minmax"
        self.percentile = percentile
        shape = (channels,) if channels is not None else ()
        self.log_scale = nn.Parameter(torch.zeros(shape), requires_grad=learn_scale)
        self.register_buffer("calibrated", torch.tensor(False))
        self.enabled = True
        self._observing = False
        self._stats: list[torch.Tensor] = []
        self._export: Any = None

    def extra_repr(self) -> str:
        gran = f"per-channel(axis={self.axis})" if self.axis is not None else "per-tensor"
        return f"role={self.role}, bits={self.bits}, {gran}, learn_scale={self.learn_scale}"

    @property
    def learn_scale(self) -> bool:
        """Whether the scale is trained."""
        return self.log_scale.requires_grad

    def effective_scale(self) -> torch.Tensor:
        """The strictly positive step size ``exp(log_scale)`` used in forward and written to ONNX."""
        return self.log_scale.exp().clamp_min(_EPS)

    def grad_scale_factor(self, x: torch.Tensor) -> float:
        """LSQ's ``g = 1 / sqrt(N · qmax)``.

        ``N`` is the number of elements sharing one scale for weights, and the
        number of features of one example (``x.numel() / x.shape[0]``) for
        activations, as in the paper's ``N_W`` and ``N_F``.
        """
        if self.role == "weight":
            n = x.numel() // (self.log_scale.numel() if self.axis is not None else 1)
        else:
            n = x.numel() // max(1, x.shape[0]) if x.dim() > 0 else 1
        return 1.0 / math.sqrt(max(1, n) * self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self._observing:
            self._observe(x.detach())
            return x
        if self._export is not None:
            return self._export.apply(x)
        if not bool(self.calibrated):
            raise RuntimeError(
                f"{self.role} quantizer used before its scale was set; run "
                "compress.quant.calibrate_(model, forward_loop) after prepare_qat "
                "(or load a calibrated state dict)"
            )
        s = self.effective_scale()
        if self.log_scale.requires_grad:
            s = _grad_scale(s, self.grad_scale_factor(x))
        if self.axis is not None:
            s = s.reshape(-1, *([1] * (x.dim() - 1)))
        return lsq_fake_quant(x, s, self.qmin, self.qmax)

    # --- calibration -----------------------------------------------------------------------------

    def start_observing_(self) -> None:
        """Clear statistics and switch to observing (identity forward)."""
        self._stats = []
        self._observing = True

    def _observe(self, x: torch.Tensor) -> None:
        a = x.abs().float()
        if self.axis is not None:
            self._stats.append(a.reshape(a.shape[0], -1).amax(dim=1))
        elif self.method == "percentile":
            flat = a.reshape(-1)
            k = max(1, min(flat.numel(), math.ceil(self.percentile / 100.0 * flat.numel())))
            self._stats.append(flat.kthvalue(k).values)
        elif self.method == "mse":
            self._stats.append(_mse_amax(x.float(), self.qmin, self.qmax))
        else:
            self._stats.append(a.max())

    def finish_observing_(self, name: str = "") -> None:
        """Set the scale to ``amax / qmax`` from the recorded statistics and stop observing.

        ``amax`` is the running max for weights and ``minmax``, the mean of
        the per-batch percentiles for ``percentile`` and the mean of the
        per-batch MSE-optimal clips for ``mse``. All-zero channels (dead
        or pruned) get the mean scale of the other channels (1.0 if all are zero),
        so every scale stays positive.

        Raises:
            RuntimeError: The quantizer saw no data.
        """
        self._observing = False
        if not self._stats:
            raise RuntimeError(
                f"quantizer {name or self.role!r} saw no data during calibration; "
                "the forward_loop must run at least one batch through every quantized layer"
            )
        stacked = torch.stack(self._stats)
        averaged = self.method in ("percentile", "mse") and self.axis is None
        amax = stacked.mean(0) if averaged else stacked.amax(0)
        self._stats = []
        scale = amax / self.qmax
        pos = scale > 0
        if not bool(pos.all()):
            fill = scale[pos].mean() if bool(pos.any()) else torch.tensor(1.0)
            scale = torch.where(pos, scale, fill)
        with torch.no_grad():
            self.log_scale.copy_(scale.log().to(self.log_scale.dtype).reshape(self.log_scale.shape))
            self.calibrated.fill_(True)

    def quantize_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes ``round(clip(x / s))`` as int8 (exactly what fake-quant multiplies by ``s``)."""
        s = self.effective_scale().detach()
        if self.axis is not None:
            s = s.reshape(-1, *([1] * (x.dim() - 1)))
        return torch.clamp(x.detach() / s, self.qmin, self.qmax).round().to(torch.int8)

    def export_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(int8 codes, float scale)`` such that ``codes · scale`` equals the fake-quantized ``w``.

        The scale has one entry per output channel (``axis`` 0) or is a scalar.
        Used by the ONNX export (``compress.quant._onnx``); quantizers whose
        scale depends on the weight itself (ternary) override it.
        """
        return self.quantize_int(w), self.effective_scale().detach()


def _mse_amax(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The clip ``c`` in ``{amax·k/64}`` minimising ``mean((q_c(x) - x)²)`` with scale ``c / qmax``."""
    flat = x.reshape(-1)
    if flat.numel() > _MSE_MAX_ELEMENTS:
        flat = flat[:: math.ceil(flat.numel() / _MSE_MAX_ELEMENTS)]
    amax = flat.abs().max()
    if not bool(amax > 0):
        return amax
    k = torch.arange(1, _MSE_CANDIDATES + 1, dtype=flat.dtype, device=flat.device)
    cands = amax * k / _MSE_CANDIDATES
    s = (cands / qmax).unsqueeze(1)
    err = ((torch.clamp(torch.round(flat.unsqueeze(0) / s), qmin, qmax) * s - flat.unsqueeze(0)) ** 2).mean(1)
    return cands[int(err.argmin())]


def calibrate_quantizer_(q: FakeQuantizer, tensors: list[torch.Tensor]) -> None:
    """Calibrate one quantizer on a list of tensors (helper for tests and docs)."""
    q.start_observing_()
    for t in tensors:
        q(t)
    q.finish_observing_()


WEIGHT_QUANTIZERS: Registry[Callable[[WeightQuantConfig, int], FakeQuantizer]] = Registry(
    "weight quantization scheme"
)
"""``weights.scheme`` -> ``factory(cfg, out_features)`` building the weight quantizer of one layer."""


@WEIGHT_QUANTIZERS.register("symmetric")
def _symmetric_weight_quantizer(cfg: WeightQuantConfig, out_features: int) -> FakeQuantizer:
    return FakeQuantizer(
        role="weight",
        bits=cfg.bits,
        channels=out_features if cfg.per_channel else None,
        learn_scale=cfg.learn_scale,
    )


def _weight_quantizer(cfg: WeightQuantConfig, out_features: int) -> FakeQuantizer:
    return WEIGHT_QUANTIZERS.get(cfg.scheme)(cfg, out_features)


def _act_quantizer(cfg: ActivationQuantConfig, cal: CalibrationConfig) -> FakeQuantizer:
    return FakeQuantizer(
        role="activation",
        bits=cfg.bits,
        learn_scale=cfg.learn_scale,
        method=cal.method,
        percentile=cal.percentile,
    )


class QuantLinear(nn.Linear):
    """``nn.Linear`` with a per-channel weight quantizer and a per-tensor input quantizer.

    Subclasses ``nn.Linear`` so ``weight`` and ``bias`` keep their state-dict keys;
    the quantizers add ``weight_quantizer.*`` and ``input_quantizer.*``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        cfg: QuantConfig,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_quantizer = _weight_quantizer(cfg.weights, out_features)
        self.input_quantizer = _act_quantizer(cfg.activations, cfg.calibration)

    @classmethod
    def from_float(cls, linear: nn.Linear, cfg: QuantConfig) -> QuantLinear:
        """A ``QuantLinear`` sharing ``linear``'s parameters (no copy)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, cfg=cfg, device="meta")
        q.weight = linear.weight
        q.bias = linear.bias
        q.weight_quantizer.to_empty(device=linear.weight.device)
        q.input_quantizer.to_empty(device=linear.weight.device)
        for fq in (q.weight_quantizer, q.input_quantizer):
            with torch.no_grad():
                fq.log_scale.zero_()
                fq.calibrated.fill_(False)
        q.train(linear.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(
            self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias
        )


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a per-output-channel weight quantizer and a per-tensor input quantizer.

    Subclasses ``nn.Conv2d`` (``weight``/``bias`` keep their keys), like ``QuantLinear``. With
    BatchNorm folded first (``compress.quant.fold_batchnorm``) the quantized weights are the ones a
    deployed convolution uses. ``prepare_qat`` with ``quantize_residual_conv_outputs`` also gives a
    convolution that feeds a residual add an ``output_quantizer`` (else it is ``None``).
    """

    def __init__(self, conv: nn.Conv2d, *, cfg: QuantConfig) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.weight_quantizer = _weight_quantizer(cfg.weights, conv.out_channels)
        self.input_quantizer = _act_quantizer(cfg.activations, cfg.calibration)
        self.output_quantizer: FakeQuantizer | None = None
        for fq in (self.weight_quantizer, self.input_quantizer):
            fq.to(conv.weight.device)
        self.train(conv.training)

    def add_output_quantizer_(self, cfg: QuantConfig) -> FakeQuantizer:
        """Give this convolution a per-tensor output quantizer (``cfg.activations``), in place.

        For a convolution whose output goes into a residual add: with it the exported graph reads
        ``DequantizeLinear → Conv → QuantizeLinear``, which ONNX Runtime runs as ``QLinearConv``.
        Its state-dict keys are ``output_quantizer.*``; it is calibrated and trained like the input
        quantizer.

        Returns:
            The new quantizer.
        """
        self.output_quantizer = _act_quantizer(cfg.activations, cfg.calibration).to(self.weight.device)
        return self.output_quantizer

    @classmethod
    def from_float(cls, conv: nn.Conv2d, cfg: QuantConfig) -> QuantConv2d:
        """A ``QuantConv2d`` sharing ``conv``'s parameters (no copy)."""
        return cls(conv, cfg=cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        return y if self.output_quantizer is None else self.output_quantizer(y)


class QuantMatMul(MatMul):
    """``a @ b`` with a per-tensor quantizer on each input (attention Q·Kᵀ and probs·V)."""

    def __init__(self, *, cfg: QuantConfig) -> None:
        super().__init__()
        self.a_quantizer = _act_quantizer(cfg.activations, cfg.calibration)
        self.b_quantizer = _act_quantizer(cfg.activations, cfg.calibration)

    @classmethod
    def from_float(cls, mm: MatMul, cfg: QuantConfig) -> QuantMatMul:
        """A ``QuantMatMul`` replacing ``mm``."""
        q = cls(cfg=cfg)
        q.train(mm.training)
        return q

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.a_quantizer(a), self.b_quantizer(b))
