"""prepare_qat / calibrate_ / set_quant_enabled_ on tiny-vit, and save/load of a QAT model."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from compress.models import load_model, save_model
from compress.models.layers import MatMul
from compress.quant import (
    QuantConfig,
    QuantLinear,
    QuantMatMul,
    calibrate_,
    is_quantized,
    prepare_qat,
    quantized_modules,
    quantizers,
    set_quant_enabled_,
)
from tests._helpers.models import tiny_vit


def _calibrated(cfg: QuantConfig | None = None, depth: int = 2) -> tuple[nn.Module, torch.Tensor]:
    m = tiny_vit(depth=depth)
    x = torch.randn(16, 1, 8, 8)
    prepare_qat(m, cfg)
    calibrate_(m, lambda model: [model(x[i : i + 8]) for i in (0, 8)])
    return m, x


def test_prepare_swaps_every_linear_and_matmul_and_keeps_state_dict_keys():
    m = tiny_vit()
    fp_keys = set(m.state_dict())
    n_linear = sum(type(x) is nn.Linear for x in m.modules())
    n_mm = sum(type(x) is MatMul for x in m.modules())
    prepare_qat(m)
    assert not any(type(x) in (nn.Linear, MatMul) for x in m.modules())
    assert sum(isinstance(x, QuantLinear) for x in m.modules()) == n_linear == 14
    assert sum(isinstance(x, QuantMatMul) for x in m.modules()) == n_mm == 4
    assert len(quantized_modules(m)) == 18
    keys = set(m.state_dict())
    assert fp_keys <= keys
    assert {k for k in keys - fp_keys} == {
        k for k in keys if "_quantizer." in k and k.rsplit(".", 1)[1] in ("log_scale", "calibrated")
    }
    # a float state dict loads into the quantized model (non-strict: the scales are new)
    missing, unexpected = m.load_state_dict(tiny_vit(seed=1).state_dict(), strict=False)
    assert not unexpected
    assert all("_quantizer." in k for k in missing)


def test_attention_matmuls_can_stay_float():
    m = prepare_qat(tiny_vit(), QuantConfig(quantize_attention_matmuls=False))
    assert not any(isinstance(x, QuantMatMul) for x in m.modules())
    assert len(quantized_modules(m)) == 14


def test_per_tensor_weights_have_one_scale():
    m = prepare_qat(tiny_vit(), QuantConfig.model_validate({"weights": {"per_channel": False}}))
    assert m.blocks[0].attn.q.weight_quantizer.log_scale.shape == ()
    assert m.blocks[0].attn.q.input_quantizer.log_scale.shape == ()
    assert prepare_qat(tiny_vit()).blocks[0].mlp.fc1.weight_quantizer.log_scale.shape == (64,)


def test_prepare_twice_and_nothing_to_quantize_are_errors():
    m = prepare_qat(tiny_vit())
    with pytest.raises(ValueError, match="already quantized"):
        prepare_qat(m)
    with pytest.raises(ValueError, match="no module to quantize"):
        prepare_qat(nn.Sequential(nn.ReLU()))


def test_calibration_sets_weight_scales_to_channel_amax_over_127():
    m, _ = _calibrated()
    fc1 = m.blocks[0].mlp.fc1
    expected = fc1.weight.detach().abs().amax(dim=1) / 127
    assert torch.allclose(fc1.weight_quantizer.effective_scale().detach(), expected, rtol=1e-6)
    assert all(bool(q.calibrated) for _, q in quantizers(m))


def test_calibration_sees_the_float_activations_and_restores_train_mode():
    m = tiny_vit().train()
    x = torch.randn(8, 1, 8, 8)
    seen = []
    hook = m.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().abs().max()))
    m.eval()
    m(x)
    hook.remove()
    m.train()
    prepare_qat(m)
    calibrate_(m, lambda model: model(x))
    assert m.head.input_quantizer.effective_scale().item() == pytest.approx(seen[0].item() / 127, rel=1e-6)
    assert m.training


def test_disabling_quantization_reproduces_float_logits_exactly():
    fp = tiny_vit().eval()
    x = torch.randn(8, 1, 8, 8)
    ref = fp(x)
    m, _ = _calibrated()
    m.load_state_dict({**m.state_dict(), **fp.state_dict()})
    m.eval()
    assert not torch.allclose(m(x), ref, atol=1e-5)  # fake-quant changes the logits
    assert set_quant_enabled_(m, False) == 36
    assert torch.equal(m(x), ref)
    set_quant_enabled_(m, True)
    assert not torch.equal(m(x), ref)


def test_save_load_round_trip_of_a_qat_model(tmp_path):
    m, x = _calibrated(
        QuantConfig.model_validate({"weights": {"bits": 4}, "calibration": {"method": "percentile"}})
    )
    with torch.no_grad():
        m.blocks[1].attn.pv.b_quantizer.log_scale.add_(0.25)  # a "learned" scale
    m.eval()
    save_model(m, tmp_path / "qat.pt")
    loaded = load_model(tmp_path / "qat.pt").eval()
    assert is_quantized(loaded)
    assert loaded.blocks[0].mlp.fc2.weight_quantizer.bits == 4
    assert loaded.blocks[0].mlp.fc2.input_quantizer.method == "percentile"
    assert torch.equal(
        loaded.blocks[1].attn.pv.b_quantizer.log_scale, m.blocks[1].attn.pv.b_quantizer.log_scale
    )
    assert torch.equal(loaded(x), m(x))
    assert [t["name"] for t in loaded._compress_transforms] == ["qat"]


def test_every_scale_and_weight_receives_gradient():
    m, x = _calibrated()
    m.train()
    m(x).pow(2).mean().backward()
    no_grad = [
        n for n, q in quantizers(m) if q.log_scale.grad is None or not q.log_scale.grad.abs().sum() > 0
    ]
    assert no_grad == []
    assert m.blocks[0].attn.q.weight.grad.abs().sum() > 0


def test_config_rejects_unknown_keys_and_bits():
    with pytest.raises(pydantic.ValidationError, match="bits"):
        QuantConfig.model_validate({"weights": {"bits": 3}})
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QuantConfig.model_validate({"weights": {"per_chanel": True}})
    cfg = QuantConfig()
    assert QuantConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert (cfg.weights.bits, cfg.weights.per_channel, cfg.activations.bits, cfg.calibration.batches) == (
        8,
        True,
        8,
        4,
    )
