"""INT8 ``u8s8`` export of CNNs in the form ONNX Runtime CPU runs with integer kernels (issue 7).

A timm ResNet-18 shrunk through its config (channels 8-32) is QAT-prepared (BatchNorm folded) and
calibrated, with and without ``quantize_residual_conv_outputs``; its ``u8s8`` file must become
``QLinearConv`` nodes under ONNX Runtime's optimizer, while ``s8s8`` files of the default QAT model and
Transformer files stay exactly what they were.
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compress.export import export_onnx_qdq, parity, qdq_summary
from compress.export.config import ParityTolerancesConfig
from compress.export.parity import check_parity
from compress.models import build_model, load_model, save_model
from compress.quant import QuantConfig, QuantConv2d, QuantLinear, calibrate_, fold_batchnorm, prepare_qat
from compress.quant.api import residual_conv_names
from tests._helpers.models import tiny_vit

pytest.importorskip("timm")

TINY_RESNET = {
    "arch": "resnet18",
    "num_classes": 10,
    "in_chans": 1,
    "kwargs": {"channels": [8, 16, 16, 32], "stem_width": 8},
}
"""timm's ResNet-18 (7x7 stem + max-pool, 8 BasicBlocks, 3 downsample convs), 8 to 32 channels."""


def _tiny_resnet_qat(x: torch.Tensor, cfg: QuantConfig | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("timm", TINY_RESNET)
    m.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics before folding
        for i in range(0, len(x), 32):
            m(x[i : i + 32])
    prepare_qat(m.eval(), cfg or QuantConfig(quantize_residual_conv_outputs=False))
    calibrate_(m, lambda model: model(x))
    return m.eval()


def _ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _ort_optimized(path: Path, out: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime CPU runs (extended optimizations: the Q/DQ fusions), as a model."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ort_cnn")
    g = torch.Generator().manual_seed(0)
    x_cal = torch.randn(128, 1, 32, 32, generator=g)
    x_test = torch.randn(128, 1, 32, 32, generator=g)
    model = _tiny_resnet_qat(x_cal)
    ex = x_cal[:2]
    paths = {
        "u8s8": export_onnx_qdq(model, root / "u8.onnx", ex, flavour="u8s8"),
        "u8s8-plain": export_onnx_qdq(model, root / "u8p.onnx", ex, flavour="u8s8", ort_integer_convs=False),
        "s8s8": export_onnx_qdq(model, root / "s8.onnx", ex, flavour="s8s8"),
        "s8s8-flag-off": export_onnx_qdq(
            model, root / "s8p.onnx", ex, flavour="s8s8", ort_integer_convs=False
        ),
    }
    residual = _tiny_resnet_qat(x_cal, QuantConfig(quantize_residual_conv_outputs=True))
    paths["u8s8-residual"] = export_onnx_qdq(residual, root / "u8r.onnx", ex, flavour="u8s8")
    paths["s8s8-residual"] = export_onnx_qdq(residual, root / "s8r.onnx", ex, flavour="s8s8")
    return {"root": root, "model": model, "residual": residual, "x": x_test, "paths": paths}


def _n_convs(model: torch.nn.Module) -> int:
    return sum(isinstance(m, QuantConv2d) for m in model.modules())


def test_ort_fuses_each_conv_whose_relu_feeds_only_a_quantizer_into_qlinearconv(cnn):
    model, root = cnn["model"], cnn["root"]
    n_convs = _n_convs(model)
    assert n_convs == 21
    fused = collections.Counter(
        n.op_type for n in _ort_optimized(cnn["paths"]["u8s8"], root / "opt.onnx").graph.node
    )
    # conv1 of each of the 8 blocks (Conv -> Relu -> Q); conv2 and the 3 downsample convs feed the
    # residual Add with no quantizer after them, and the stem's Relu feeds a MaxPool: those stay float
    assert fused["QLinearConv"] == 8
    assert fused["Conv"] + fused["FusedConv"] == n_convs - 8
    plain = collections.Counter(
        n.op_type for n in _ort_optimized(cnn["paths"]["u8s8-plain"], root / "plain.onnx").graph.node
    )
    assert plain["QLinearConv"] == 0  # the form before issue 7: every conv in float
    assert plain["Conv"] + plain["FusedConv"] == n_convs


def test_relu_outputs_get_uint8_zero_point_0_with_their_dequantize_partners(cnn):
    zero_points = _zero_points_by_source(onnx.load(str(cnn["paths"]["u8s8"])))
    assert set(zero_points["Relu"]) == {0}
    assert zero_points["input"] == [128]  # the normalised image is signed: the symmetric grid stays
    n_act = sum(isinstance(m, QuantConv2d | QuantLinear) for m in cnn["model"].modules())
    assert len(zero_points["Relu"]) + len(zero_points["input"]) == n_act


def _zero_points_by_source(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Activation zero points by the op producing the quantized tensor (through pooling, Flatten, Identity).

    Also checks that every ``QuantizeLinear`` is uint8 and read only by ``DequantizeLinear`` nodes with
    the same zero point.
    """
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    zero_points: dict[str, list[int]] = collections.defaultdict(list)
    for q in (n for n in g.node if n.op_type == "QuantizeLinear"):
        zp = inits[q.input[2]]
        assert zp.dtype == np.uint8
        src = producers.get(q.input[0])
        while src is not None and src.op_type in ("MaxPool", "GlobalAveragePool", "Flatten", "Identity"):
            src = producers.get(src.input[0])
        zero_points["input" if src is None else src.op_type].append(int(zp))
        for dq in consumers[q.output[0]]:
            assert dq.op_type == "DequantizeLinear"
            assert int(inits[dq.input[2]]) == int(zp)
    return zero_points


def test_s8s8_is_unchanged_by_the_u8s8_rewrite(cnn):
    s8, s8_off = (onnx.load(str(cnn["paths"][k])) for k in ("s8s8", "s8s8-flag-off"))
    assert s8.SerializeToString() == s8_off.SerializeToString()
    summary = qdq_summary(s8)
    n_act = sum(isinstance(m, QuantConv2d | QuantLinear) for m in cnn["model"].modules())
    assert summary["activations"] == n_act  # one quantizer per layer input, none added
    assert summary["activation_zero_points"] == [("int8", 0)]
    plain = qdq_summary(cnn["paths"]["u8s8-plain"])
    assert plain["activations"] == n_act
    assert plain["activation_zero_points"] == [("uint8", 128)]
    assert _ops(cnn["paths"]["s8s8"]) == _ops(cnn["paths"]["u8s8-plain"])


def test_u8s8_cnn_parity_within_the_export_stage_int8_tolerance(cnn):
    model, x = cnn["model"], cnn["x"]
    tol = ParityTolerancesConfig().int8
    new = parity(cnn["paths"]["u8s8"], model, x, batch_size=64)
    assert check_parity(new, tol) == []
    assert new["cosine"] > 0.999
    plain = parity(cnn["paths"]["u8s8-plain"], model, x, batch_size=64)
    assert plain["max_abs_error"] < 1e-3  # the plain form re-encodes the fake-quant grid exactly
    fused = parity(cnn["paths"]["u8s8"], model, x, batch_size=64, graph_optimization="all")
    assert check_parity(fused, tol) == []  # what ORT's integer kernels compute on this CPU


def test_relu_zero_point_0_keeps_codes_above_127_the_fake_quant_model_clips(tmp_path):
    """The documented deviation: after a Relu, values in (127·s, 255·s] are kept instead of clipped."""
    g = torch.Generator().manual_seed(1)
    x_cal = torch.randn(64, 1, 32, 32, generator=g)
    model = _tiny_resnet_qat(x_cal)
    with torch.no_grad():  # shrink every activation scale: now many Relu outputs exceed 127·s
        for m in model.modules():
            if isinstance(m, QuantConv2d | QuantLinear):
                m.input_quantizer.log_scale.sub_(np.log(4.0))
    new = export_onnx_qdq(model, tmp_path / "new.onnx", x_cal[:2], flavour="u8s8")
    plain = export_onnx_qdq(
        model, tmp_path / "plain.onnx", x_cal[:2], flavour="u8s8", ort_integer_convs=False
    )
    x = torch.randn(32, 1, 32, 32, generator=g)
    assert parity(plain, model, x)["max_abs_error"] < 1e-3
    assert parity(new, model, x)["max_abs_error"] > 10 * parity(plain, model, x)["max_abs_error"]


def test_transformer_u8s8_export_is_unchanged(tmp_path):
    model = tiny_vit()
    prepare_qat(model)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calibrate_(model, lambda m: m(x))
    model.eval()
    a = export_onnx_qdq(model, tmp_path / "a.onnx", x[:2], flavour="u8s8")
    b = export_onnx_qdq(model, tmp_path / "b.onnx", x[:2], flavour="u8s8", ort_integer_convs=False)
    assert onnx.load(str(a)).SerializeToString() == onnx.load(str(b)).SerializeToString()
    assert qdq_summary(a)["activation_zero_points"] == [("uint8", 128)]


def test_residual_conv_output_quantizers_make_every_conv_but_the_stem_qlinearconv(cnn):
    model, root = cnn["residual"], cnn["root"]
    fused = collections.Counter(
        n.op_type for n in _ort_optimized(cnn["paths"]["u8s8-residual"], root / "res.onnx").graph.node
    )
    assert fused["QLinearConv"] == _n_convs(model) - 1
    assert fused["Conv"] + fused["FusedConv"] == 1  # the stem: its Relu feeds a MaxPool
    zero_points = _zero_points_by_source(onnx.load(str(cnn["paths"]["u8s8-residual"])))
    assert set(zero_points["Relu"]) == {0}
    assert set(zero_points["Conv"]) == {128}  # signed conv outputs: the symmetric grid, re-encoded
    assert len(zero_points["Conv"]) == 12  # 8 blocks' conv2 + 4 downsample convs


def test_residual_conv_names_follow_the_trace_through_folded_batchnorms():
    m = build_model("timm", TINY_RESNET)
    assert residual_conv_names(m) == []  # an unfolded BatchNorm sits between the conv and the add
    fold_batchnorm(m)
    names = residual_conv_names(m)
    assert names[:3] == ["net.layer1.0.conv2", "net.layer1.0.downsample.0", "net.layer1.1.conv2"]
    assert len(names) == 12


def test_residual_conv_output_quantizers_sit_on_convs_feeding_adds_and_are_calibrated(cnn, tmp_path):
    model = cnn["residual"]
    with_output = sorted(n for n, m in model.named_modules() if getattr(m, "output_quantizer", None))
    blocks = [f"net.layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    downsample = [f"net.layer{i}.0.downsample.0" for i in range(1, 5)]
    assert with_output == sorted([f"{b}.conv2" for b in blocks] + downsample)
    assert all(bool(model.get_submodule(n).output_quantizer.calibrated) for n in with_output)
    assert all(
        getattr(m, "output_quantizer", 0) is None
        for m in cnn["model"].modules()
        if isinstance(m, QuantConv2d)
    )
    save_model(model, tmp_path / "q.pt")
    reloaded = load_model(tmp_path / "q.pt").eval()
    assert "net.layer1.0.conv2.output_quantizer.log_scale" in reloaded.state_dict()
    x = cnn["x"][:8]
    assert torch.equal(reloaded(x), model(x))


def test_residual_conv_output_quantizers_parity_and_s8s8(cnn):
    model, x = cnn["residual"], cnn["x"]
    tol = ParityTolerancesConfig().int8
    for key in ("u8s8-residual", "s8s8-residual"):
        p = parity(cnn["paths"][key], model, x, batch_size=64)
        assert check_parity(p, tol) == []
        assert p["cosine"] > 0.999
    s8 = qdq_summary(cnn["paths"]["s8s8-residual"])
    assert s8["activation_zero_points"] == [("int8", 0)]
    n_inputs = sum(isinstance(m, QuantConv2d | QuantLinear) for m in model.modules())
    assert s8["activations"] == n_inputs + 12  # one more per output quantizer


class _Untraceable(torch.nn.Module):
    """A residual block behind data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 1, 1)
        self.conv2 = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x if x.sum() > 0 else x


def test_residual_conv_names_needs_a_traceable_model():
    with pytest.raises(ValueError, match="quantize_residual_conv_outputs"):
        prepare_qat(_Untraceable(), QuantConfig(quantize_residual_conv_outputs=True))


def test_auto_default_quantizes_residual_outputs_of_a_traceable_cnn_only():
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert QuantConfig().quantize_residual_conv_outputs == "auto"

    def outputs(model: torch.nn.Module) -> int:
        return sum(getattr(m, "output_quantizer", None) is not None for m in model.modules())

    auto = _tiny_resnet_qat(x, QuantConfig())
    explicit = _tiny_resnet_qat(x, QuantConfig(quantize_residual_conv_outputs=True))
    off = _tiny_resnet_qat(x, QuantConfig(quantize_residual_conv_outputs=False))
    assert outputs(auto) == outputs(explicit) == 12  # each block's conv2 (8) and 4 downsample convs
    assert outputs(off) == 0

    with pytest.warns(RuntimeWarning, match="keep float outputs"):
        m = prepare_qat(_Untraceable(), QuantConfig())
    assert outputs(m) == 0


def test_auto_default_leaves_a_vit_patch_embedding_alone_without_a_warning():
    vit = build_model(
        "timm",
        {"arch": "vit_tiny_patch16_224", "num_classes": 10,
         "kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # timm's ViT does not trace: auto must not try
        prepare_qat(vit, QuantConfig())
    assert all(getattr(m, "output_quantizer", None) is None for m in vit.modules())
