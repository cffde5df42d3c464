"""Ternary weights (TWN, Li & Liu, arXiv 1605.04711) as TernaryBERT and the TI code use them.

``weights: {scheme: twn}`` maps every weight tensor to ``{-α, 0, +α}``:

1. clamp ``W`` to ``[-clip, clip]`` (``clip`` = 2.5, the TI code's ``clip_val``);
2. threshold ``Δ = 0.7 · mean|W|``;
3. ``α`` = mean of ``|W|`` over the entries with ``|W| > Δ``;
4. ``Ŵ = α · sign(W) · [|W| > Δ]``.

Per tensor by default (the TI code's ``layerwise=True``, used for every Linear
layer); ``per_channel: true`` computes ``Δ`` and ``α`` per output row (the
code's row-wise variant, which it uses for the word-embedding table). ``α`` is
recomputed from the current weights at every forward; nothing is learned
(no LSQ). The backward is the straight-through estimator of the code
(``TwnQuantizer.backward``): the gradient passes unchanged inside the clip
range and is zero outside.

The integer codes are ``{-1, 0, 1}`` with scale ``α``; the ONNX export writes
them as an INT8 initializer with a per-tensor (or per-row) ``DequantizeLinear``
whose values equal the fake-quantized weights exactly.
"""

from __future__ import annotations

import torch

from compress.quant._fake_quant import _EPS, WEIGHT_QUANTIZERS, FakeQuantizer
from compress.quant.config import WeightQuantConfig

TWN_THRESHOLD_FACTOR = 0.7
"""``Δ = 0.7 · mean|W|`` (TWN; ``mean_scale`` in the TI code)."""


def twn_ternarize(
    w: torch.Tensor, *, per_channel: bool = False, threshold_factor: float = TWN_THRESHOLD_FACTOR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes and scale of ``w`` (no clamping, no gradient bookkeeping).

    Args:
        w: Weight tensor; axis 0 is the output axis for ``per_channel``.
        per_channel: One ``Δ``/``α`` per row (axis 0) instead of one per tensor.
        threshold_factor: ``Δ = threshold_factor · mean|w|``.

    Returns:
        ``(codes, alpha)``: codes in ``{-1, 0, 1}`` with ``w``'s shape and dtype;
        ``alpha`` a scalar, or shape ``[rows]`` for ``per_channel``. A tensor
        (row) with no entry above ``Δ`` (all zero) gets ``alpha = 0``.

    Example:
        >>> codes, alpha = twn_ternarize(torch.tensor([0.1, -1.0, 0.5, 2.0]))
        >>> codes.tolist(), round(alpha.item(), 4)
        ([0.0, -1.0, 1.0, 1.0], 1.1667)
    """
    a = w.abs()
    if per_channel:
        flat = a.reshape(a.shape[0], -1)
        delta = threshold_factor * flat.mean(dim=1)
        mask = flat > delta.unsqueeze(1)
        alpha = (flat * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        mask = mask.reshape(w.shape)
    else:
        delta = threshold_factor * a.mean()
        mask = a > delta
        alpha = (a * mask).sum() / mask.sum().clamp_min(1)
    codes = torch.sign(w) * mask
    return codes, alpha


class TernaryWeightQuantizer(FakeQuantizer):
    """Weight quantizer producing TWN ternary weights ``{-α, 0, +α}`` with a straight-through gradient.

    ``log_scale`` holds ``log α`` of the last forward (not trained); it is what
    ``effective_scale`` reports. Calibration only marks the quantizer ready,
    since ``α`` comes from the weights themselves.

    Args:
        channels: Rows for the per-row variant, ``None`` for one ``α`` per tensor.
        clip: Clamp ``W`` to ``[-clip, clip]`` first; the gradient is zero outside.

    Example:
        >>> q = TernaryWeightQuantizer()
        >>> q(torch.tensor([0.1, -1.0, 0.5, 2.0])).tolist()
        [0.0, -1.1666666269302368, 1.1666666269302368, 1.1666666269302368]
    """

    def __init__(self, *, channels: int | None = None, clip: float = 2.5) -> None:
        super().__init__(role="weight", bits=2, channels=channels, learn_scale=False)
        self.clip = float(clip)

    def extra_repr(self) -> str:
        gran = "per-row(axis=0)" if self.axis is not None else "per-tensor"
        return f"role=weight, ternary (TWN), {gran}, clip={self.clip}"

    def _ternarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_c = torch.clamp(w.detach(), -self.clip, self.clip)
        return twn_ternarize(w_c, per_channel=self.axis is not None)

    def _remember(self, alpha: torch.Tensor) -> None:
        with torch.no_grad():
            self.log_scale.copy_(
                alpha.clamp_min(_EPS).log().to(self.log_scale.dtype).reshape(self.log_scale.shape)
            )

    def _broadcast(self, alpha: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return alpha.reshape(-1, *([1] * (w.dim() - 1))) if self.axis is not None else alpha

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        if self._observing:
            self._observe(w.detach())
            return w
        if self._export is not None:
            return self._export.apply(w)
        codes, alpha = self._ternarize(w)
        self._remember(alpha)
        w_c = torch.clamp(w, -self.clip, self.clip)
        # exactly α·codes in the forward (w_c - w_c.detach() is 0), gradient 1 through the clamp
        return (codes * self._broadcast(alpha, w)).detach() + (w_c - w_c.detach())

    def _observe(self, x: torch.Tensor) -> None:
        self._stats.append(self._ternarize(x)[1])

    def finish_observing_(self, name: str = "") -> None:
        """Record ``α`` of the observed weights and mark the quantizer calibrated."""
        self._observing = False
        if not self._stats:
            raise RuntimeError(
                f"quantizer {name or self.role!r} saw no data during calibration; "
                "the forward_loop must run at least one batch through every quantized layer"
            )
        self._remember(self._stats[-1])
        self._stats = []
        with torch.no_grad():
            self.calibrated.fill_(True)

    def quantize_int(self, x: torch.Tensor) -> torch.Tensor:
        """Ternary codes ``{-1, 0, 1}`` as int8."""
        return self._ternarize(x)[0].to(torch.int8)

    def export_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, α)``: ``codes · α`` equals the fake-quantized weight exactly."""
        codes, alpha = self._ternarize(w)
        return codes.to(torch.int8), alpha.clamp_min(_EPS).detach()


@WEIGHT_QUANTIZERS.register("twn")
def _twn_weight_quantizer(cfg: WeightQuantConfig, out_features: int) -> FakeQuantizer:
    return TernaryWeightQuantizer(channels=out_features if cfg.per_channel else None, clip=cfg.clip)
