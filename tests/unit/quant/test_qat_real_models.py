"""QAT and Teacher Intervention on the real architectures (shrunk through their configs).

Hugging Face BERT: exposed attention (quantized Q·Kᵀ and probs·V, TI layout), the three
interventions' fidelity and gradient masks. torchvision ResNet: BatchNorm folding, quantized
convolutions, block-input intervention over the feature layout's stages. timm ViT: block-input
intervention. Every quantized model saves, reloads and exports to Q/DQ ONNX.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

from compress.models import build_model, load_model, save_model
from compress.models.hf_attention import expose_attention, is_exposed
from compress.quant import (
    InterventionLossesConfig,
    QuantConfig,
    QuantConv2d,
    batchnorm_pairs,
    calibrate_,
    find_attention_layout,
    fold_batchnorm,
    prepare_qat,
    quantized_modules,
    set_quant_enabled_,
)
from compress.quant.intervention import MASKED_SCORE, STEP_MODES, InterventionObjective, block_names
from tests._helpers.models import tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ALL_TERMS = InterventionLossesConfig(ce=1.0)
ONLY_SCORES = InterventionLossesConfig(logits=0, hidden=0, scores=1, attention_output=0)


def _bert(seed: int = 0) -> nn.Module:
    return tiny_bert(seed)


def _tokens(n: int = 6, length: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 100, (n, length), generator=g)
    x[0, 5:] = 0  # padding: masked keys
    x[1, 7:] = 0
    return x


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model("torchvision", {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"})
    m.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            m(torch.randn(8, 1, 16, 16))
    return m.eval()


def _quantized(teacher: nn.Module, x: torch.Tensor, cfg: QuantConfig | None = None) -> nn.Module:
    s = prepare_qat(copy.deepcopy(teacher), cfg)
    calibrate_(s, lambda m: m(x))
    return s.train()


# --- Hugging Face BERT -----------------------------------------------------------------------------


def test_exposed_attention_computes_the_same_function_and_is_recorded():
    m = _bert()
    x = _tokens()
    ref = m(x)
    assert expose_attention(m) == 2 and is_exposed(m)
    assert expose_attention(m) == 0  # idempotent
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    assert [t["name"] for t in m._compress_transforms] == ["expose_attention"]
    sa = m.net.bert.encoder.layer[0].attention.self
    assert all(isinstance(getattr(sa, p), nn.Module) for p in ("qk", "score_mask", "softmax", "pv"))


def test_prepare_qat_quantizes_bert_attention_matmuls_and_reloads_exactly(tmp_path):
    m = _bert()
    x = _tokens()
    q = _quantized(m, x).eval()
    names = quantized_modules(q)
    assert "net.bert.encoder.layer.1.attention.self.qk" in names
    assert "net.bert.encoder.layer.1.attention.self.pv" in names
    assert "net.bert.encoder.layer.0.attention.self.query" in names
    save_model(q, tmp_path / "q.pt")
    r = load_model(tmp_path / "q.pt").eval()
    assert torch.equal(r(x), q(x))
    assert [t["name"] for t in r._compress_transforms] == ["expose_attention", "qat"]


def test_bert_ti_layout_points_at_the_papers_signals():
    m = _bert()
    assert find_attention_layout(m) is None  # not exposed yet: nothing to intervene on
    expose_attention(m)
    lay = find_attention_layout(m)
    assert lay is not None and len(lay) == 2
    b = "net.bert.encoder.layer.1"
    assert lay[1].block == b
    assert lay[1].o == f"{b}.attention.output.dense"
    assert lay[1].probs == f"{b}.attention.self.softmax"
    assert (lay[1].after_attention, lay[1].after_attention_side) == (
        f"{b}.attention.output.LayerNorm",
        "output",
    )
    assert block_names(m) == ["net.bert.encoder.layer.0", b]


def test_every_mode_reproduces_the_bert_teacher_exactly_without_quantization():
    teacher = _bert()
    x = _tokens()
    student = _quantized(teacher, x)
    set_quant_enabled_(student, False)
    student.eval()  # dropout off: the identity must be exact
    obj = InterventionObjective(copy.deepcopy(teacher), ALL_TERMS)
    t_logits, t_feats = obj.capture_teacher(x)
    # padded keys carry the additive mask: the score loss ignores them (entries <= -100 are zeroed)
    assert bool((t_feats["scores0"][0, :, :, 5:] <= MASKED_SCORE).all())
    assert bool((t_feats["scores0"][0, :, :, :5] > MASKED_SCORE).all())
    for mode in STEP_MODES:
        logits, feats = obj.student_forward(student, x, t_feats, mode)
        assert torch.equal(logits, t_logits), mode
        terms = obj.loss_terms(logits, feats, t_logits, t_feats, torch.zeros(len(x), dtype=torch.long))
        assert all(terms[k].item() == 0.0 for k in terms if k not in ("logits", "ce")), (mode, terms)
    set_quant_enabled_(student, True)
    assert not torch.allclose(obj.student_forward(student, x, t_feats, "none")[0], t_logits)


def _grads(
    teacher: nn.Module, student: nn.Module, x: torch.Tensor, mode: str, losses: InterventionLossesConfig
):
    s = copy.deepcopy(student).eval()  # dropout off; quantizers still fake-quantize
    obj = InterventionObjective(copy.deepcopy(teacher), losses, mode=mode)  # type: ignore[arg-type]
    loss, _ = obj(s, x, torch.randint(0, 5, (len(x),)))
    loss.backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in s.named_parameters()}


@pytest.fixture(scope="module")
def bert_pair():
    teacher = _bert()
    x = _tokens()
    return teacher, _quantized(teacher, x), x


def _bert_names(part: str) -> list[str]:
    where = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value"}
    where["o"] = "attention.output.dense"
    return [f"net.bert.encoder.layer.{i}.{where[part]}.weight" for i in range(2)]


def test_bert_output_intervention_gives_v_and_wo_no_gradient_and_qk_only_the_score_loss(bert_pair):
    teacher, student, x = bert_pair
    full = _grads(teacher, student, x, "output", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "output", ONLY_SCORES)
    for n in _bert_names("v") + _bert_names("o"):
        assert torch.count_nonzero(full[n]) == 0, n
    for n in _bert_names("q") + _bert_names("k"):
        assert torch.count_nonzero(full[n]) > 0, n
        torch.testing.assert_close(full[n], scores_only[n], atol=1e-6, rtol=1e-4)


def test_bert_map_intervention_gives_qk_only_the_score_loss_but_trains_v_and_wo(bert_pair):
    teacher, student, x = bert_pair
    full = _grads(teacher, student, x, "map", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "map", ONLY_SCORES)
    for n in _bert_names("q") + _bert_names("k"):
        torch.testing.assert_close(full[n], scores_only[n], atol=1e-6, rtol=1e-4)
    for n in _bert_names("v") + _bert_names("o"):
        assert torch.count_nonzero(full[n]) > 0, n
    # without intervention Q/K learn from every term: the checks above can fail
    none = _grads(teacher, student, x, "none", ALL_TERMS)
    assert not torch.allclose(none[_bert_names("q")[0]], scores_only[_bert_names("q")[0]], rtol=1e-3)


def test_bert_context_intervention_gives_v_no_gradient_and_trains_wo(bert_pair):
    teacher, student, x = bert_pair
    full = _grads(teacher, student, x, "context", ALL_TERMS)
    for n in _bert_names("v"):
        assert torch.count_nonzero(full[n]) == 0, n
    for n in _bert_names("o") + _bert_names("q"):
        assert torch.count_nonzero(full[n]) > 0, n


def test_quantized_bert_exports_to_qdq_onnx_that_agrees_with_the_fake_quant_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from compress.export import export_onnx_qdq

    m = _bert()
    x = _tokens(16)
    q = _quantized(m, x).eval()
    path = export_onnx_qdq(q, tmp_path / "q.onnx", x[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    ref = q(x).detach().numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


# --- CNNs: BatchNorm folding and quantized convolutions --------------------------------------------


def test_batchnorm_folding_keeps_the_function_and_finds_residual_downsample_pairs():
    m = _resnet()
    x = torch.randn(4, 1, 16, 16)
    ref = m(x)
    pairs = batchnorm_pairs(m)
    assert ("net.layer2.0.downsample.0", "net.layer2.0.downsample.1") in pairs
    assert len(pairs) == 20  # every BN of resnet18 follows a conv
    assert fold_batchnorm(m) == 20
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)
    # a BN that follows something other than a conv is left alone
    seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert fold_batchnorm(seq) == 0


def test_prepare_qat_folds_batchnorm_quantizes_convs_and_reloads_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from compress.export import export_onnx_qdq

    m = _resnet()
    x = torch.randn(8, 1, 16, 16)
    q = _quantized(m, x).eval()
    assert sum(isinstance(mod, QuantConv2d) for mod in q.modules()) == 20
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in q.modules())
    set_quant_enabled_(q, False)
    torch.testing.assert_close(q(x), m(x), atol=1e-4, rtol=1e-4)  # folded, unquantized: the same function
    set_quant_enabled_(q, True)
    save_model(q, tmp_path / "q.pt")
    r = load_model(tmp_path / "q.pt").eval()
    assert torch.equal(r(x), q(x))
    assert [t["name"] for t in r._compress_transforms] == ["fold_batchnorm", "qat"]
    path = export_onnx_qdq(q, tmp_path / "q.onnx", x[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert (out.argmax(1) == q(x).argmax(1).numpy()).mean() >= 0.875
    # without folding, BN stays and the convs are still quantized
    kept = prepare_qat(copy.deepcopy(m), QuantConfig(fold_batchnorm=False))
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in kept.modules()) == 20


def test_block_input_intervention_on_resnet_stages_is_exact_and_cuts_the_path():
    teacher = _resnet()
    x = torch.randn(8, 1, 16, 16)
    assert block_names(teacher) == [f"net.layer{i}" for i in range(1, 5)]
    student = _quantized(teacher, x)
    set_quant_enabled_(student, False)
    student.eval()
    obj = InterventionObjective(copy.deepcopy(teacher), ALL_TERMS)
    t_logits, t_feats = obj.capture_teacher(x)
    logits, _ = obj.student_forward(student, x, t_feats, "block_input")
    torch.testing.assert_close(logits, t_logits, atol=1e-4, rtol=1e-4)  # folded BN: equal up to rounding
    set_quant_enabled_(student, True)
    g = _grads(
        teacher, student, x, "block_input", InterventionLossesConfig(hidden=0, scores=0, attention_output=0)
    )
    # only the logit loss: it reaches the last stage, not the earlier ones (their outputs are replaced)
    assert torch.count_nonzero(g["net.layer4.1.conv2.weight"]) > 0
    assert torch.count_nonzero(g["net.layer1.0.conv1.weight"]) == 0
    assert torch.count_nonzero(g["net.conv1.weight"]) == 0


def _timm_vit(seed: int = 0) -> nn.Module:
    pytest.importorskip("timm")
    torch.manual_seed(seed)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}
    return build_model(
        "timm", {"arch": "vit_tiny_patch16_224", "num_classes": 10, "in_chans": 1, "kwargs": kwargs}
    ).eval()


def test_timm_vit_exposed_attention_keeps_the_function_and_every_mode_is_exact(tmp_path):
    from compress.models.exposed import expose

    teacher = _timm_vit()
    x = torch.randn(8, 1, 16, 16)
    ref = teacher(x)
    assert block_names(teacher) == ["net.blocks.0", "net.blocks.1"]
    assert find_attention_layout(teacher) is None  # not exposed yet
    exposed = copy.deepcopy(teacher)
    assert expose(exposed) == 2 and expose(exposed) == 0
    torch.testing.assert_close(exposed(x), ref, atol=1e-5, rtol=1e-5)
    lay = find_attention_layout(exposed)
    assert (
        lay is not None
        and lay[0].o == "net.blocks.0.attn.proj"
        and lay[0].after_attention == "net.blocks.0.norm2"
    )
    student = _quantized(teacher, x)
    assert "net.blocks.1.attn.qk" in quantized_modules(student)
    set_quant_enabled_(student, False)
    student.eval()
    obj = InterventionObjective(copy.deepcopy(teacher), ALL_TERMS)
    t_logits, t_feats = obj.capture_teacher(x)
    for mode in STEP_MODES:
        logits, _ = obj.student_forward(student, x, t_feats, mode)
        torch.testing.assert_close(logits, t_logits, atol=1e-5, rtol=1e-5, msg=mode)
    set_quant_enabled_(student, True)
    save_model(student, tmp_path / "q.pt")
    r = load_model(tmp_path / "q.pt").eval()
    assert torch.equal(r(x), student.eval()(x))


def test_timm_vit_gradient_masks_follow_the_papers_rules():
    """Fused qkv: under TI-O its weight gets gradient only from the score loss (Q/K rows), V rows none."""
    teacher = _timm_vit()
    x = torch.randn(8, 1, 16, 16)
    student = _quantized(teacher, x)
    full = _grads(teacher, student, x, "output", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "output", ONLY_SCORES)
    d = 32
    for i in range(2):
        w = f"net.blocks.{i}.attn.qkv.weight"
        assert torch.count_nonzero(full[w][2 * d :]) == 0  # V rows
        assert torch.count_nonzero(full[f"net.blocks.{i}.attn.proj.weight"]) == 0
        assert torch.count_nonzero(full[w][: 2 * d]) > 0
        torch.testing.assert_close(full[w][: 2 * d], scores_only[w][: 2 * d], atol=1e-6, rtol=1e-4)
    mapped = _grads(teacher, student, x, "map", ALL_TERMS)
    assert torch.count_nonzero(mapped["net.blocks.1.attn.qkv.weight"][2 * d :]) > 0  # V trains under TI-M
    # block_input needs no attention layout at all
    obj = InterventionObjective(copy.deepcopy(teacher), ALL_TERMS)
    _, t_feats = obj.capture_teacher(x)
    obj.student_forward(student, x, t_feats, "block_input")


def test_exposed_timm_vit_exports_to_qdq_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from compress.export import export_onnx_qdq

    teacher = _timm_vit()
    x = torch.randn(16, 1, 16, 16)
    q = _quantized(teacher, x).eval()
    path = export_onnx_qdq(q, tmp_path / "q.onnx", x[:2])
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # per block qkv (once: the exposed forward runs the fused projection once), qk, pv, proj, fc1, fc2; + head
    assert ops.count("MatMul") + ops.count("Gemm") == 2 * 6 + 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert (out.argmax(1) == q(x).argmax(1).numpy()).mean() >= 0.875


def test_plain_float_copy_keeps_batchnorm_folding_and_drops_quantizers_and_attention_exposure():
    from compress.stages.export import plain_float_copy

    m = _resnet()
    x = torch.randn(4, 1, 16, 16)
    q = _quantized(m, x).eval()
    set_quant_enabled_(q, False)
    plain = plain_float_copy(q)  # the fashion-resnet export failed here: BN tensors were looked for
    assert [t["name"] for t in plain._compress_transforms] == ["fold_batchnorm"]
    assert not any(isinstance(mod, (QuantConv2d, nn.BatchNorm2d)) for mod in plain.modules())
    torch.testing.assert_close(plain(x), q(x))
    b = _bert()
    ids = _tokens()
    qb = prepare_qat(copy.deepcopy(b), QuantConfig())
    assert any(hasattr(mod, "qk") for mod in qb.modules())
    set_quant_enabled_(qb, False)
    pb = plain_float_copy(qb)
    assert getattr(pb, "_compress_transforms", []) == []
    assert not any(hasattr(mod, "qk") for mod in pb.modules())  # transformers' own attention again
    torch.testing.assert_close(pb(ids), b(ids), atol=1e-5, rtol=1e-5)
