"""Ternary (TWN) weights, per-layer overrides with their precedence, MSE calibration, and their export."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from compress.export import export_onnx_qdq, parity, qdq_summary
from compress.models import load_model, save_model
from compress.quant import (
    FakeQuantizer,
    QuantConfig,
    QuantLinear,
    TernaryWeightQuantizer,
    WeightQuantConfig,
    calibrate_,
    prepare_qat,
    twn_ternarize,
)
from compress.quant._fake_quant import calibrate_quantizer_
from tests._helpers.models import tiny_vit

TWN_8BIT_ENDS = {
    "weights": {"scheme": "twn"},
    "overrides": [
        {"pattern": "patch_embed", "weights": {"bits": 8}},
        {"pattern": "head", "weights": {"bits": 8}},
    ],
}


def _reference_twn(w: torch.Tensor) -> torch.Tensor:
    """The TI code's layer-wise TwnQuantizer, written out literally (clamp ±2.5, Δ = 0.7·mean|W|)."""
    w = torch.clamp(w, -2.5, 2.5)
    thres = 0.7 * w.norm(p=1) / w.nelement()
    pos, neg = (w > thres).float(), (w < -thres).float()
    mask = (w.abs() > thres).float()
    alpha = (mask * w).abs().sum() / mask.sum()
    return alpha * pos - alpha * neg


def test_twn_matches_the_ti_code_formula_and_takes_three_values():
    w = torch.randn(16, 24) * 0.3
    w[0, 0] = 4.0  # beyond the clip: clamped to 2.5 first
    q = TernaryWeightQuantizer()
    out = q(w)
    assert torch.allclose(out, _reference_twn(w), atol=1e-7)
    assert len(torch.unique(out)) == 3
    codes, alpha = twn_ternarize(torch.clamp(w, -2.5, 2.5))
    assert torch.equal(out, codes * alpha)
    assert q.effective_scale().item() == pytest.approx(alpha.item(), rel=1e-6)


def test_twn_per_row_uses_one_threshold_and_alpha_per_output_row():
    w = torch.randn(4, 32) * torch.tensor([[0.1], [1.0], [0.5], [2.0]])
    out = TernaryWeightQuantizer(channels=4)(w)
    for r in range(4):
        assert torch.allclose(out[r], _reference_twn(w[r : r + 1])[0], atol=1e-6)
    assert len(torch.unique(out.abs())) == 5  # 0 plus one alpha per row


def test_twn_gradient_is_straight_through_inside_the_clip_and_zero_outside():
    w = torch.tensor([0.05, -0.8, 1.2, 3.0, -2.7], requires_grad=True)
    q = TernaryWeightQuantizer(clip=2.5)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (q(w) * upstream).sum().backward()
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]))


def test_twn_config_is_canonicalised_and_rejects_contradictions():
    cfg = WeightQuantConfig.model_validate({"scheme": "twn"})
    assert (cfg.bits, cfg.learn_scale, cfg.per_channel) == (2, False, False)
    assert WeightQuantConfig.model_validate({"scheme": "twn", "per_channel": True}).per_channel
    with pytest.raises(pydantic.ValidationError, match=r"weights.bits: got 8 with scheme 'twn'"):
        WeightQuantConfig.model_validate({"scheme": "twn", "bits": 8})
    with pytest.raises(pydantic.ValidationError, match="nothing to learn"):
        WeightQuantConfig.model_validate({"scheme": "twn", "learn_scale": True})
    full = QuantConfig.model_validate(TWN_8BIT_ENDS)
    assert QuantConfig.model_validate(full.model_dump(mode="json")) == full


def test_overrides_keep_the_ends_at_8_bits_and_ternarize_the_rest():
    m = prepare_qat(tiny_vit(), QuantConfig.model_validate(TWN_8BIT_ENDS))
    kinds = {n: type(mod.weight_quantizer) for n, mod in m.named_modules() if isinstance(mod, QuantLinear)}
    assert kinds.pop("patch_embed") is FakeQuantizer
    assert kinds.pop("head") is FakeQuantizer
    assert m.head.weight_quantizer.bits == 8
    assert m.head.weight_quantizer.axis == 0
    assert len(kinds) == 12
    assert set(kinds.values()) == {TernaryWeightQuantizer}
    x = torch.randn(8, 1, 8, 8)
    calibrate_(m, lambda model: model(x))
    fc1 = m.blocks[1].mlp.fc1
    assert len(torch.unique(fc1.weight_quantizer(fc1.weight))) == 3
    assert len(torch.unique(m.head.weight_quantizer(m.head.weight))) > 3


def test_override_precedence_exact_name_then_first_glob_then_default():
    cfg = QuantConfig.model_validate(
        {
            "weights": {"bits": 4},
            "overrides": [
                {"pattern": "blocks.*.attn.*", "weights": {"bits": 2}},
                {"pattern": "blocks.*", "quantize": False},
                {"pattern": "blocks.0.attn.q", "weights": {"bits": 7}},
            ],
        }
    )
    m = prepare_qat(tiny_vit(), cfg)
    assert m.blocks[0].attn.q.weight_quantizer.bits == 7  # exact name beats the earlier glob
    assert m.blocks[1].attn.q.weight_quantizer.bits == 2  # first matching glob wins
    assert type(m.blocks[0].mlp.fc1) is nn.Linear  # 'blocks.*' with quantize: false
    assert m.patch_embed.weight_quantizer.bits == 4  # no override: default
    assert isinstance(m.blocks[0].attn.qk, nn.Module)
    assert hasattr(m.blocks[0].attn.qk, "a_quantizer")
    assert m.blocks[0].attn.qk.a_quantizer.bits == 8  # activations override not given: default


def test_an_override_matching_nothing_is_an_error_listing_the_modules():
    cfg = QuantConfig.model_validate({"overrides": [{"pattern": "classifier", "weights": {"bits": 8}}]})
    with pytest.raises(ValueError, match=r"\['classifier'\] match no quantizable module.*patch_embed.*head"):
        prepare_qat(tiny_vit(), cfg)


def test_ternary_model_saves_loads_and_exports_to_qdq_with_parity(tmp_path):
    m = prepare_qat(tiny_vit(), QuantConfig.model_validate(TWN_8BIT_ENDS))
    x = torch.rand(64, 1, 8, 8)
    calibrate_(m, lambda model: model(x))
    m.eval()
    save_model(m, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt").eval()
    assert isinstance(again.blocks[0].attn.v.weight_quantizer, TernaryWeightQuantizer)
    assert torch.equal(again(x), m(x))
    path = export_onnx_qdq(m, tmp_path / "w2a8.onnx", x[:2])
    summary = qdq_summary(path)
    assert summary["weights"] == 14
    assert summary["float_weight_initializers"] == 0
    p = parity(path, m, x)
    logits = m(x).detach()
    assert p["top1_agreement"] >= 0.98
    assert p["max_abs_error"] < 0.02 * float(logits.max() - logits.min())


def test_mse_calibration_clips_outliers_and_lowers_the_error():
    torch.manual_seed(0)
    x = torch.randn(4096)
    x[:4] = torch.tensor([40.0, -35.0, 30.0, 50.0])
    err, bulk, amax = {}, {}, {}
    for method in ("minmax", "mse"):
        q = FakeQuantizer(role="activation", bits=4, method=method)
        calibrate_quantizer_(q, [x])
        err[method] = (q(x) - x).pow(2).mean().item()
        bulk[method] = (q(x[4:]) - x[4:]).pow(2).mean().item()
        amax[method] = q.effective_scale().item() * 7
    assert amax["minmax"] == pytest.approx(50.0, rel=1e-5)
    assert amax["mse"] < 0.5 * amax["minmax"]
    assert err["mse"] <= err["minmax"]  # minmax is one of the candidates
    assert bulk["mse"] < 0.5 * bulk["minmax"]
    cfg = QuantConfig.model_validate({"calibration": {"method": "mse"}})
    m = prepare_qat(tiny_vit(), cfg)
    calibrate_(m, lambda model: model(torch.randn(8, 1, 8, 8)))
    assert m.blocks[0].attn.q.input_quantizer.method == "mse"
