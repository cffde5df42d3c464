"""INT4 weight-only export: RTN and QAT weights, blocked DequantizeLinear (opset 21) and MatMulNBits, both run
in ONNX Runtime CPU against the torch model holding the same INT4 weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compress.errors import ExportError
from compress.export import ParityTolerancesConfig, check_parity, parity
from compress.export.int4 import (
    INT4_OPSET,
    Int4Linear,
    export_onnx_int4,
    int4_layers,
    int4_model,
    int4_summary,
    rtn_int4,
)
from compress.quant import QuantConfig, calibrate_, prepare_qat, set_quant_enabled_
from tests._helpers.models import tiny_vit

INT4_TOL = ParityTolerancesConfig().int4


def test_rtn_int4_blocks_scales_and_a_short_last_block():
    torch.manual_seed(0)
    w = torch.randn(3, 40)  # 40 = 16 + 16 + 8: the last block is shorter
    w[1, 16:32] = 0.0  # an all-zero block
    codes, scales = rtn_int4(w, 16)
    assert codes.dtype == torch.int8 and codes.shape == (3, 40)
    assert scales.shape == (3, 3)
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert torch.allclose(scales[0, 2], w[0, 32:].abs().max() / 7)
    assert scales[1, 1] == 1.0 and not codes[1, 16:32].any()
    deq = codes.float() * scales.repeat_interleave(16, dim=1)[:, :40]
    # round to nearest: every weight within half a step of its block's grid
    step = scales.repeat_interleave(16, dim=1)[:, :40]
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())


@pytest.mark.parametrize("bad", [0, 8, 48, 100])
def test_bad_block_size(bad: int):
    with pytest.raises(ExportError, match="power of two >= 16"):
        int4_model(tiny_vit(), block_size=bad)


def test_qat_4bit_weights_keep_learned_codes_and_scales_exactly():
    """A 4-bit QAT layer's learned per-channel scale, repeated per block: the same weights for any block size."""
    torch.manual_seed(0)
    qat = prepare_qat(tiny_vit(dim=32, mlp_dim=64), QuantConfig.model_validate({"weights": {"bits": 4}}))
    calibrate_(qat, lambda m: m(torch.randn(16, 1, 8, 8)))
    qat.eval()
    layer = qat.blocks[0].mlp.fc1
    fq = layer.weight_quantizer(layer.weight).detach()  # the fake-quantized weight QAT trains with
    for bs in (16, 64):
        src = int4_model(qat, block_size=bs)
        new = src.blocks[0].mlp.fc1
        assert isinstance(new, Int4Linear) and new.origin == "qat"
        assert torch.equal(new.codes, layer.weight_quantizer.quantize_int(layer.weight))
        # equal up to float32 rounding of LSQ's gradient-scaling identity (x - y).detach() + y
        assert torch.allclose(new.dequantized_weight(), fq, rtol=0, atol=1e-6)
        assert int4_layers(src) == {
            "qat": sum(1 for n, m in qat.named_modules() if hasattr(m, "weight_quantizer")),
            "rtn": 0,
        }
    # weight-only: the INT4 model equals the QAT model with activation quantizers off
    ref = int4_model(qat, block_size=16)
    wonly = qat
    for name, m in wonly.named_modules():
        if name.endswith("_quantizer") and "weight" not in name:
            m.enabled = False
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ref(x), wonly(x), atol=1e-5)
    set_quant_enabled_(qat, True)


def test_8bit_qat_layers_are_rounded_from_their_float_weights():
    torch.manual_seed(0)
    qat = prepare_qat(tiny_vit(), QuantConfig())
    calibrate_(qat, lambda m: m(torch.randn(16, 1, 8, 8)))
    src = int4_model(qat, block_size=32, keep_float=["head"])
    counts = int4_layers(src)
    assert counts["qat"] == 0 and counts["rtn"] > 0
    assert type(src.head) is not Int4Linear  # keep_float
    codes, _ = rtn_int4(qat.blocks[0].mlp.fc1.weight, 32)
    assert torch.equal(src.blocks[0].mlp.fc1.codes, codes)
    assert qat.blocks[0].mlp.fc1.weight_quantizer.enabled  # the input model is not changed


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A float tiny-vit whose MLP input (48) is not a multiple of the block (32), in both INT4 forms."""
    root = tmp_path_factory.mktemp("int4")
    model = tiny_vit(dim=32, mlp_dim=48).eval()
    src = int4_model(model, block_size=32)
    x = torch.randn(40, 1, 8, 8)
    paths = {
        fl: export_onnx_int4(src, root / f"model.{fl}.onnx", x[:2], flavour=fl)
        for fl in ("dq", "matmulnbits")
    }
    return {"model": model, "src": src, "x": x, **paths}


def test_dq_file_is_opset21_int4_blocked(exported: dict[str, Any]):
    proto = onnx.load(str(exported["dq"]))
    onnx.checker.check_model(proto, full_check=True)
    assert next(o.version for o in proto.opset_import if o.domain == "") == INT4_OPSET
    s = int4_summary(exported["dq"])
    n_linear = sum(1 for m in exported["src"].modules() if isinstance(m, Int4Linear))
    assert s["dq_int4"] == n_linear and s["matmulnbits"] == 0 and s["float_weight_initializers"] == 0
    assert s["block_sizes"] == [32]
    inits = {i.name: i for i in proto.graph.initializer}
    fc2 = next(
        n for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and inits[n.input[0]].dims == [48, 32]
    )  # fmt: skip
    attrs = {a.name: a.i for a in fc2.attribute}
    assert attrs == {"axis": 0, "block_size": 32}
    assert list(inits[fc2.input[1]].dims) == [2, 32]  # ceil(48 / 32) blocks along the input axis
    # the codes in the file are the torch model's, transposed to MatMul's [in, out]
    codes = numpy_helper.to_array(inits[fc2.input[0]])
    assert np.array_equal(codes.T, exported["src"].blocks[0].mlp.fc2.codes.numpy())


def test_matmulnbits_packing(exported: dict[str, Any]):
    proto = onnx.load(str(exported["matmulnbits"]))
    assert any(o.domain == "com.microsoft" for o in proto.opset_import)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    node = next(
        n for n in proto.graph.node
        if n.op_type == "MatMulNBits" and {a.name: a.i for a in n.attribute}["K"] == 48
    )  # fmt: skip
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs == {"K": 48, "N": 32, "bits": 4, "block_size": 32}
    packed = inits[node.input[1]]
    assert packed.dtype == np.uint8 and packed.shape == (32, 2, 16)
    lo, hi = packed & 0x0F, packed >> 4
    unpacked = np.stack([lo, hi], axis=-1).reshape(32, 64).astype(np.int16) - 8
    want = exported["src"].blocks[0].mlp.fc2.codes.numpy()
    assert np.array_equal(unpacked[:, :48], want) and not unpacked[:, 48:].any()  # padded with code 0
    assert inits[node.input[2]].shape == (64,)  # N * blocks scales
    assert int4_summary(exported["matmulnbits"])["matmulnbits"] == 14


@pytest.mark.parametrize("flavour", ["dq", "matmulnbits"])
def test_both_forms_run_in_ort_cpu_within_the_int4_tolerance(exported: dict[str, Any], flavour: str):
    p = parity(exported[flavour], exported["src"], exported["x"], batch_size=16)
    assert check_parity(p, INT4_TOL) == []
    assert p["max_abs_error"] < 1e-4  # the same weights: float32 rounding only
    # against the float model the 4-bit weights do cost something: measured, never zero
    vs_float = parity(exported[flavour], exported["model"], exported["x"], batch_size=16)
    assert vs_float["max_abs_error"] > 1e-3


def test_ort_all_fuses_dq_into_int8_activation_kernels(exported: dict[str, Any]):
    """Why onnx-int4 records ort_cpu_parity: ORT_ENABLE_ALL runs the DQ file with int8 activations
    (session.qdq_matmulnbits_accuracy_level defaults to 4); MatMulNBits files as written compute in float."""
    import onnxruntime as ort

    x = exported["x"].numpy()
    with torch.no_grad():
        ref = exported["src"](exported["x"]).numpy()

    def run(path: Path, level: str | None) -> np.ndarray:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if level is not None:
            so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]

    assert np.abs(run(exported["dq"], None) - ref).max() > 1e-4
    assert np.abs(run(exported["dq"], "0") - ref).max() < 1e-4
    assert np.abs(run(exported["matmulnbits"], None) - ref).max() < 1e-4


def test_a_model_without_linear_layers_is_an_export_error(tmp_path: Path):
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    with pytest.raises(ExportError, match="no nn.Linear layer to quantize to INT4"):
        export_onnx_int4(conv, tmp_path / "m.onnx", torch.randn(2, 1, 8, 8))
    with pytest.raises(ExportError, match="unknown INT4 flavour 'int3'"):
        export_onnx_int4(tiny_vit(), tmp_path / "m.onnx", torch.randn(2, 1, 8, 8), flavour="int3")  # type: ignore[arg-type]
