"""Fake quantizers: the forward formula, STE and LSQ gradients, calibration, enable/disable."""

from __future__ import annotations

import math

import pytest
import torch

from compress.quant import (
    FakeQuantizer,
    QuantConfig,
    QuantLinear,
    QuantMatMul,
    calibrate_,
    int_range,
    lsq_fake_quant,
    prepare_qat,
)
from compress.quant._fake_quant import calibrate_quantizer_


def _act(scale: float, bits: int = 8, learn: bool = True) -> FakeQuantizer:
    q = FakeQuantizer(role="activation", bits=bits, learn_scale=learn)
    with torch.no_grad():
        q.log_scale.fill_(math.log(scale))
        q.calibrated.fill_(True)
    return q


def _reference(x: torch.Tensor, s: torch.Tensor, bits: int = 8) -> torch.Tensor:
    qmin, qmax = int_range(bits)
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


@pytest.mark.parametrize(("bits", "expected"), [(8, (-128, 127)), (7, (-64, 63)), (4, (-8, 7)), (2, (-2, 1))])
def test_int_range(bits, expected):
    assert int_range(bits) == expected


@pytest.mark.parametrize("bits", [8, 4])
def test_activation_forward_is_round_clip_times_scale(bits):
    q = _act(0.05, bits)
    x = torch.randn(3, 5, 7) * 4
    s = q.effective_scale().detach()
    assert torch.equal(q(x), _reference(x, s, bits))
    codes = q(x) / s
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= int_range(bits)[0] - 1e-4
    assert codes.max() <= int_range(bits)[1] + 1e-4


def test_round_is_half_to_even_like_onnx():
    q = _act(1.0)
    assert q(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_quant_linear_forward_equals_fake_quant_formula():
    lin = torch.nn.Linear(6, 4)
    ql = QuantLinear.from_float(lin, QuantConfig())
    x = torch.randn(8, 3, 6)
    calibrate_quantizer_(ql.weight_quantizer, [ql.weight])
    calibrate_quantizer_(ql.input_quantizer, [x])
    sw = ql.weight_quantizer.effective_scale().detach()
    sx = ql.input_quantizer.effective_scale().detach()
    assert torch.allclose(sw, lin.weight.detach().abs().amax(dim=1) / 127)
    expected = torch.nn.functional.linear(_reference(x, sx), _reference(lin.weight, sw[:, None]), lin.bias)
    assert torch.allclose(ql(x), expected, atol=1e-6)
    assert ql.weight is lin.weight
    assert ql.bias is lin.bias


def test_quant_matmul_quantizes_both_inputs():
    mm = QuantMatMul(cfg=QuantConfig())
    a, b = torch.randn(2, 4, 5), torch.randn(2, 5, 3) * 3
    calibrate_quantizer_(mm.a_quantizer, [a])
    calibrate_quantizer_(mm.b_quantizer, [b])
    sa, sb = mm.a_quantizer.effective_scale().detach(), mm.b_quantizer.effective_scale().detach()
    assert torch.allclose(mm(a, b), _reference(a, sa) @ _reference(b, sb), atol=1e-6)
    assert not torch.allclose(mm(a, b), a @ b, atol=1e-4)


def test_ste_gradient_identity_inside_zero_outside():
    q = _act(0.1, learn=False)  # range [-12.8, 12.7]
    x = torch.tensor([-20.0, -12.0, -0.33, 0.0, 0.26, 12.6, 13.0, 50.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_scale_gradient_formula_sign_and_grad_scale():
    s = 0.1
    q = _act(s)
    x = torch.tensor([[-20.0, -0.33, 0.26, 0.04, 13.0, 50.0]])
    q(x).sum().backward()
    # d x̂/ds: qmin below, round(x/s) - x/s inside, qmax above (Esser et al., eq. 3)
    per_elem = torch.tensor([-128.0, round(-3.3) + 3.3, round(2.6) - 2.6, round(0.4) - 0.4, 127.0, 127.0])
    g = 1.0 / math.sqrt(x.numel() * 127)  # N_F = features per example (batch of 1)
    assert q.grad_scale_factor(x) == pytest.approx(g)
    # the parameter is log(s): chain rule adds a factor s
    assert q.log_scale.grad.item() == pytest.approx(g * s * per_elem.sum().item(), rel=1e-4)
    # sign: saturated large values ask for a larger step; a value just below a .5 boundary for a smaller one
    q2 = _act(s)
    q2(torch.tensor([[50.0]])).sum().backward()
    assert q2.log_scale.grad.item() > 0
    q3 = _act(s)
    q3(torch.tensor([[0.26]])).sum().backward()  # round(2.6) - 2.6 = 0.4 > 0
    assert q3.log_scale.grad.item() > 0
    q4 = _act(s)
    q4(torch.tensor([[0.24]])).sum().backward()  # round(2.4) - 2.4 = -0.4 < 0
    assert q4.log_scale.grad.item() < 0


def test_weight_grad_scale_uses_elements_per_channel():
    q = FakeQuantizer(role="weight", channels=4)
    w = torch.randn(4, 9)
    assert q.grad_scale_factor(w) == pytest.approx(1.0 / math.sqrt(9 * 127))
    per_tensor = FakeQuantizer(role="weight", channels=None)
    assert per_tensor.grad_scale_factor(w) == pytest.approx(1.0 / math.sqrt(36 * 127))


def test_fixed_scale_gets_no_gradient():
    q = _act(0.1, learn=False)
    q(torch.randn(4, 3, requires_grad=True)).sum().backward()
    assert q.log_scale.grad is None
    assert not q.learn_scale


def test_minmax_calibration_sets_amax_over_127():
    q = FakeQuantizer(role="activation")
    calibrate_quantizer_(q, [torch.tensor([1.0, -2.0]), torch.tensor([3.81, 0.0])])
    assert q.effective_scale().item() == pytest.approx(3.81 / 127, rel=1e-6)
    assert bool(q.calibrated)


def test_percentile_calibration_ignores_outliers():
    x = torch.cat([torch.linspace(-1, 1, 10_000), torch.tensor([100.0])])
    pct = FakeQuantizer(role="activation", method="percentile", percentile=99.0)
    mm = FakeQuantizer(role="activation", method="minmax")
    calibrate_quantizer_(pct, [x])
    calibrate_quantizer_(mm, [x])
    assert mm.effective_scale().item() == pytest.approx(100 / 127)
    assert pct.effective_scale().item() == pytest.approx(0.98 / 127, rel=0.02)


def test_weight_calibration_is_per_output_channel_and_fills_zero_channels():
    q = FakeQuantizer(role="weight", channels=3, method="percentile")  # weights always use max
    w = torch.tensor([[0.5, -1.27], [0.0, 0.0], [2.54, 0.1]])
    calibrate_quantizer_(q, [w])
    s = q.effective_scale().detach()
    assert s[0].item() == pytest.approx(0.01)
    assert s[2].item() == pytest.approx(0.02)
    assert s[1].item() == pytest.approx(0.015)  # dead channel: mean of the others, still positive


def test_uncalibrated_quantizer_refuses_to_run():
    with pytest.raises(RuntimeError, match="calibrate_"):
        FakeQuantizer(role="activation")(torch.randn(3))


def test_calibrate_without_batches_names_the_quantizer():
    from tests._helpers.models import tiny_vit

    m = prepare_qat(tiny_vit(depth=1))
    with pytest.raises(RuntimeError, match="patch_embed.weight_quantizer.*saw no data"):
        calibrate_(m, lambda model: None)


def test_lsq_fake_quant_matches_torch_fake_quantize():
    x = torch.randn(1000) * 3
    s = torch.tensor(0.037)
    ref = torch.fake_quantize_per_tensor_affine(x, 0.037, 0, -128, 127)
    assert torch.allclose(lsq_fake_quant(x, s, -128, 127), ref, atol=1e-6)
