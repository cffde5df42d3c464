"""INT8 Q/DQ ONNX export: graph structure (S8S8 and U8S8), dynamic batch, parity with the fake-quant model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compress.errors import ExportError
from compress.export import export_onnx, export_onnx_qdq, parity, qdq_summary
from compress.quant import QuantConfig, QuantLinear, calibrate_, prepare_qat, set_quant_enabled_
from tests._helpers.models import digits, tiny_vit


def _qat_model(data: Any, cfg: QuantConfig | None = None) -> torch.nn.Module:
    m = tiny_vit()
    prepare_qat(m, cfg)
    batches = list(zip(range(2), data.batches("train", 64), strict=False))
    calibrate_(m, lambda model: [model(x) for _, (x, _) in batches])
    return m.eval()


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("qdq")
    data = digits(root)
    model = _qat_model(data)
    x_val = data.tensors("val")[0]
    paths = {f: export_onnx_qdq(model, root / f"{f}.onnx", x_val[:2], flavour=f) for f in ("s8s8", "u8s8")}
    fp = tiny_vit()
    fp.load_state_dict({k: v for k, v in model.state_dict().items() if "_quantizer." not in k})
    export_onnx(fp.eval(), root / "fp32.onnx", x_val[:2])
    return {"root": root, "model": model, "x": x_val, "paths": paths, "fp32": root / "fp32.onnx"}


@pytest.mark.parametrize("flavour", ["s8s8", "u8s8"])
def test_checker_clean_and_dynamic_batch(exported, flavour):
    path = exported["paths"][flavour]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for b in (1, 7):
        assert _run(path, exported["x"][:b]).shape == (b, 10)


@pytest.mark.parametrize("flavour", ["s8s8", "u8s8"])
def test_weights_are_int8_initializers_with_dq_on_the_output_axis(exported, flavour):
    proto = onnx.load(str(exported["paths"][flavour]))
    summary = qdq_summary(proto)
    assert summary["weights"] == 14  # every QuantLinear
    assert summary["float_weight_initializers"] == 0
    assert summary["weight_zero_points_all_zero"]
    assert summary["weight_code_range"] == [-127, 127]  # per-channel max maps to ±127
    # MatMul gets the exporter's [in, out] weight (axis 1), Gemm(transB=1) keeps [out, in] (axis 0)
    assert summary["weight_axes"] == {"Gemm": [0], "MatMul": [1]}
    inits = {i.name: i for i in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    for n in dq:
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT8
        assert numpy_helper.to_array(inits[n.input[2]]).dtype == np.int8


def test_int8_codes_equal_the_torch_quantizer_codes(exported):
    proto = onnx.load(str(exported["paths"]["s8s8"]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    head: QuantLinear = exported["model"].head
    fc1: QuantLinear = exported["model"].blocks[0].mlp.fc1
    want_head = head.weight_quantizer.quantize_int(head.weight).numpy()
    want_fc1 = fc1.weight_quantizer.quantize_int(fc1.weight).numpy()
    int8 = [v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2]
    assert any(v.shape == want_head.shape and np.array_equal(v, want_head) for v in int8)
    assert any(
        v.shape == want_fc1.T.shape and np.array_equal(v, want_fc1.T) for v in int8
    )  # MatMul: transposed


def test_activation_zero_points_s8s8_zero_u8s8_128(exported):
    s8, u8 = (qdq_summary(exported["paths"][f]) for f in ("s8s8", "u8s8"))
    # 14 Linear inputs + 2 inputs of each of the 4 attention matmuls
    assert s8["activations"] == u8["activations"] == 22
    assert s8["activation_zero_points"] == [("int8", 0)]
    assert u8["activation_zero_points"] == [("uint8", 128)]
    proto = onnx.load(str(exported["paths"]["u8s8"]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            assert inits[n.input[2]].dtype == np.uint8
            assert int(inits[n.input[2]]) == 128


def test_s8s8_and_u8s8_compute_the_same(exported):
    x = exported["x"][:64]
    a, b = _run(exported["paths"]["s8s8"], x), _run(exported["paths"]["u8s8"], x)
    assert np.allclose(a, b, atol=1e-5)


def test_parity_with_fake_quant_model_on_digits_val(exported):
    model, x = exported["model"], exported["x"]
    logits = model(x).detach()
    for path in exported["paths"].values():
        p = parity(path, model, x, batch_size=128)
        assert p["n"] == len(x)
        assert p["top1_agreement"] >= 0.98
        assert p["max_abs_error"] < 0.02 * float(logits.max() - logits.min())
        assert p["cosine"] > 0.9999


def test_int8_file_is_much_smaller_in_weights(exported):
    def weight_bytes(path: Path) -> int:
        return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer
                   if len(i.dims) == 2 and i.dims[0] > 1)  # fmt: skip

    assert weight_bytes(exported["fp32"]) / weight_bytes(exported["paths"]["s8s8"]) == pytest.approx(
        4.0, rel=0.01
    )
    assert exported["paths"]["s8s8"].stat().st_size < exported["fp32"].stat().st_size


def test_four_bit_and_per_tensor_export_match_torch(tmp_path):
    model = prepare_qat(tiny_vit(), QuantConfig.model_validate({"weights": {"bits": 4, "per_channel": False},
                                                               "activations": {"bits": 4}}))  # fmt: skip
    x = torch.rand(64, 1, 8, 8)
    calibrate_(model, lambda m: m(x))
    model.eval()
    path = export_onnx_qdq(model, tmp_path / "w4a4.onnx", x[:2])
    proto = onnx.load(str(path))
    assert sum(n.op_type == "Clip" for n in proto.graph.node) == 22  # narrow activation grid enforced
    codes = [
        numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert all(c.min() >= -8 and c.max() <= 7 for c in codes if c.ndim == 2)
    assert np.allclose(_run(path, x), model(x).detach().numpy(), atol=1e-4)


def test_export_refuses_float_uncalibrated_disabled_models_and_old_opsets(tmp_path):
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ExportError, match="no fake quantizers"):
        export_onnx_qdq(tiny_vit(), tmp_path / "a.onnx", x)
    with pytest.raises(ExportError, match="never calibrated"):
        export_onnx_qdq(prepare_qat(tiny_vit()), tmp_path / "b.onnx", x)
    m = prepare_qat(tiny_vit())
    calibrate_(m, lambda model: model(x))
    set_quant_enabled_(m, False)
    with pytest.raises(ExportError, match="disabled"):
        export_onnx_qdq(m, tmp_path / "c.onnx", x)
    with pytest.raises(ExportError, match="opset >= 13"):
        export_onnx_qdq(m, tmp_path / "d.onnx", x, opset=11)
    assert not any(tmp_path.glob("*.onnx"))
    assert all(q.enabled is False for q in (m.head.input_quantizer, m.head.weight_quantizer))
    assert m.head.input_quantizer._export is None
