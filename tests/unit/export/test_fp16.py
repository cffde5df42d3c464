"""onnx-fp16: conversion of tiny-vit, ResNet-18 and a tiny BERT; clipping; kept ops; stage; validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pydantic
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import compress.stages.export as export_module
from compress.config.schema import TargetConfig
from compress.errors import ExportError
from compress.export import (
    Fp16ExportConfig,
    ParityTolerancesConfig,
    check_parity,
    convert_to_fp16,
    export_onnx,
    export_onnx_fp16,
    export_onnx_qdq,
    fp16_summary,
    parity,
)
from compress.export.fp16 import FP16_MAX, METADATA_KEY
from compress.models import build_model
from compress.quant import QuantConfig, calibrate_, prepare_qat
from compress.stages.export import ExportStage, ExportStageConfig
from compress.stages.validate import ValidateStage, ValidateStageConfig
from tests._helpers.models import Recorder, calibrated_qat, digits, stage_context, tiny_bert, tiny_vit

FP16_TOL = ParityTolerancesConfig().fp16


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("torchvision", {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"})


def _bert() -> torch.nn.Module:
    return tiny_bert()


MODELS = {
    "tiny-vit": (tiny_vit, lambda n: torch.randn(n, 1, 8, 8)),
    "resnet18": (_resnet, lambda n: torch.randn(n, 1, 16, 16)),
    "bert": (_bert, lambda n: torch.randint(0, 100, (n, 12))),
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model exported to FP32 and FP16 ONNX, with its inputs."""
    build, inputs = MODELS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = build().eval()
    torch.manual_seed(1)
    x = inputs(48)
    fp32 = export_onnx(model, root / "model.fp32.onnx", x[:2])
    report = export_onnx_fp16(model, root / "model.fp16.onnx", x[:2])
    return {"name": request.param, "model": model, "x": x, "fp32": fp32, "fp16": root / "model.fp16.onnx",
            "report": report}  # fmt: skip


def _float_init_bytes(path: Path, data_type: int) -> int:
    return sum(
        numpy_helper.to_array(t).nbytes
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == data_type
    )


def test_io_keeps_float32_and_int64_and_every_weight_is_fp16(exported: dict[str, Any]) -> None:
    ref, got = fp16_summary(exported["fp32"]), fp16_summary(exported["fp16"])
    assert got["inputs"] == ref["inputs"] == {"input": "int64" if exported["name"] == "bert" else "float32"}
    assert got["outputs"] == ref["outputs"] == {"logits": "float32"}
    assert set(got["initializers"]) == {"float16"}, got["initializers"]
    assert got["initializers"]["float16"] == ref["initializers"]["float32"]
    assert got["conversion"] == exported["report"].to_dict()
    proto = onnx.load(str(exported["fp16"]))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch kept
    ops = [n.op_type for n in proto.graph.node]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops)
    # every float constant computes in float16 too: no float32 Constant left
    for n in proto.graph.node:
        if n.op_type == "Constant":
            assert n.attribute[0].t.data_type != TensorProto.FLOAT, n.name
    r = exported["report"]
    assert (r.clipped_values, r.fp32_nodes, r.kept_fp32_tensors) == (0, 0, 0)
    assert r.casts_inserted == (1 if exported["name"] == "bert" else 2)  # output (and float input) casts


def test_weights_halve(exported: dict[str, Any]) -> None:
    fp32_bytes = _float_init_bytes(exported["fp32"], TensorProto.FLOAT)
    assert _float_init_bytes(exported["fp16"], TensorProto.FLOAT16) * 2 == fp32_bytes
    ratio = exported["fp32"].stat().st_size / exported["fp16"].stat().st_size
    if exported["name"] == "resnet18":  # 11 M weights: the file is the weights
        assert 1.95 < ratio < 2.05
    else:  # tiny models: graph structure is a large share of the file
        assert ratio > 1.1


def test_parity_within_the_fp16_tolerance(exported: dict[str, Any]) -> None:
    p = parity(exported["fp16"], exported["model"], exported["x"], batch_size=24, threads=2)
    assert check_parity(p, FP16_TOL) == []
    assert p["top1_agreement"] == 1.0
    assert p["cosine"] > 0.9999
    assert 0 < p["max_abs_error"] < 5e-3  # float16 rounding, not float32 (fp32 files: < 1e-5)


def test_fp16_tolerance_is_documented_and_looser_than_fp32() -> None:
    tol = ParityTolerancesConfig()
    assert (tol.fp16.min_top1_agreement, tol.fp16.min_cosine, tol.fp16.max_abs_error) == (0.99, 0.999, None)
    assert tol.fp16.min_top1_agreement < tol.fp32.min_top1_agreement


def test_out_of_range_weights_are_clipped_and_reported(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e5, 0.5, 0, 0], [-7e4, 1, 0, 0], [0.25, 0, 0, 0]]))
        model[0].bias.copy_(torch.tensor([1e-9, 0.0, 2.0]))
    with pytest.warns(UserWarning, match=r"2 weight/constant value\(s\) exceed the float16 range"):
        report = export_onnx_fp16(model, tmp_path / "m.onnx", torch.randn(2, 4))
    assert report.clipped_values == 2
    assert report.underflowed_values == 1  # the 1e-9 bias
    assert len(report.clipped_tensors) == 1
    assert "65504" in (report.warning or "")
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer]
    w = next(a for a in weights if a.shape == (3, 4))
    assert w.dtype == np.float16
    assert (w[0, 0], w[1, 0]) == (FP16_MAX, -FP16_MAX)
    assert fp16_summary(tmp_path / "m.onnx")["conversion"]["clipped_values"] == 2


def _handmade() -> onnx.ModelProto:
    """y = min(x + range(0, 4) + zeros(4), 1e6): Range (no float16 form), value_float, ConstantOfShape."""
    const = lambda out, **kw: helper.make_node("Constant", [], [out], **kw)  # noqa: E731
    nodes = [
        const("start", value=helper.make_tensor("s", TensorProto.FLOAT, [], [0.0])),
        const("limit", value=helper.make_tensor("l", TensorProto.FLOAT, [], [4.0])),
        const("delta", value=helper.make_tensor("d", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        const("shape", value=helper.make_tensor("sh", TensorProto.INT64, [1], [4])),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        const("big", value_float=1e6),
        helper.make_node("Add", ["x", "r"], ["a"]),
        helper.make_node("Add", ["a", "zeros"], ["b"]),
        helper.make_node("Min", ["b", "big"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ops_without_fp16_form_stay_fp32_and_constants_convert() -> None:
    import onnxruntime as ort

    src = _handmade()
    with pytest.warns(UserWarning, match="1 weight/constant"):
        out, report = convert_to_fp16(src)
    assert len(src.graph.node) == 10  # the input model is not modified
    by_out = {n.output[0]: n for n in out.graph.node}
    for name in ("start", "limit", "delta"):  # Range has no float16 form: its constants stay float32
        assert by_out[name].attribute[0].t.data_type == TensorProto.FLOAT
    assert by_out["zeros"].attribute[0].t.data_type == TensorProto.FLOAT16  # default fill made explicit
    assert numpy_helper.to_array(by_out["big"].attribute[0].t).item() == FP16_MAX
    add = next(n for n in out.graph.node if n.op_type == "Add" and "r" not in n.input)
    assert by_out[add.input[1]].op_type == "Cast"  # Range output cast to float16 before the Add
    assert (report.kept_fp32_tensors, report.converted_tensors, report.clipped_values) == (3, 2, 1)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x + np.arange(4, dtype=np.float32), atol=5e-3)
    assert json.loads({p.key: p.value for p in out.metadata_props}[METADATA_KEY])["clipped_values"] == 1


def test_keep_fp32_ops_runs_them_in_float32(tmp_path: Path) -> None:
    model, x = tiny_vit().eval(), torch.randn(16, 1, 8, 8)
    cfg = Fp16ExportConfig(keep_fp32_ops=["Softmax", "LayerNormalization"])
    report = export_onnx_fp16(model, tmp_path / "m.onnx", x[:2], config=cfg)
    assert report.fp32_nodes == 2 + 5  # 2 attention softmaxes, 5 layer norms
    assert report.keep_fp32_ops == ("LayerNormalization", "Softmax")
    g = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "m.onnx"))).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    elem |= {t.name: t.data_type for t in g.initializer}
    kept = [n for n in g.node if n.op_type in ("Softmax", "LayerNormalization")]
    assert len(kept) == 7
    for n in kept:
        assert {elem[t] for t in (*n.input, *n.output)} == {TensorProto.FLOAT}, n.name
    assert g.node[len(g.node) - 1].op_type == "Cast"  # the float16 logits cast back to float32
    assert check_parity(parity(tmp_path / "m.onnx", model, x, threads=2), FP16_TOL) == []


def test_config_rejects_unknown_ops_and_round_trips() -> None:
    with pytest.raises(
        pydantic.ValidationError, match=r"unknown ONNX op type 'Softmx' \(did you mean 'Softmax'\?\)"
    ):
        Fp16ExportConfig(keep_fp32_ops=["Softmx"])
    cfg = ExportStageConfig.model_validate(
        {"formats": ["onnx-fp32", "onnx-fp16"], "fp16": {"keep_fp32_ops": ["Pow"]}}
    )
    assert ExportStageConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert ExportStage.check_order(cfg, []) == []  # no qat needed


def test_refuses_fake_quant_models_and_qdq_graphs(tmp_path: Path) -> None:
    qat = prepare_qat(tiny_vit(), QuantConfig())
    calibrate_(qat, lambda m: m(torch.randn(16, 1, 8, 8)))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ExportError, match="enabled fake quantizer.*set_quant_enabled_"):
        export_onnx_fp16(qat.eval(), tmp_path / "q.onnx", x)
    assert not (tmp_path / "q.onnx").exists()
    export_onnx_qdq(qat, tmp_path / "int8.onnx", x)
    with pytest.raises(ExportError, match="DequantizeLinear, QuantizeLinear nodes .*INT8 Q/DQ model"):
        convert_to_fp16(onnx.load(str(tmp_path / "int8.onnx")))


# ------------------------------------------------------------------ export stage and validate


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The export stage with formats [onnx-fp32, onnx-fp16] on a calibrated QAT tiny-vit."""
    root = tmp_path_factory.mktemp("fp16-stage")
    data = digits(root)
    qat = calibrated_qat(data)
    ctx = stage_context(root, data, qat, kind="export", index=2, reporter=Recorder())
    res = ExportStage().run(ctx, ExportStageConfig(formats=["onnx-fp32", "onnx-fp16"]))
    return {"root": root, "data": data, "model": qat, "result": res}


def test_stage_writes_fp16_artifact_with_meta(stage_run: dict[str, Any]) -> None:
    res, root = stage_run["result"], stage_run["root"]
    arts = {a.name: a for a in res.artifacts}
    assert list(arts) == ["onnx-fp32", "onnx-fp16"]
    a = arts["onnx-fp16"]
    assert (a.path, a.format, a.precision) == ("artifacts/model.fp16.onnx", "onnx", "fp16")
    assert (a.meta["flavour"], a.meta["opset"]) == ("fp16", 17)
    assert a.meta["size_bytes"] == (root / a.path).stat().st_size
    assert a.meta["parity"]["n"] == stage_run["data"].split_size("val")
    assert check_parity(a.meta["parity"], FP16_TOL) == []
    assert (a.meta["fp16"]["clipped_values"], a.meta["warnings"]) == (0, [])
    # the QAT model is exported as onnx-fp32 is: quantizers disabled, no fake-quant arithmetic in the graph
    assert not {"Round", "QuantizeLinear", "DequantizeLinear"} & {
        n.op_type for n in onnx.load(str(root / a.path)).graph.node
    }
    assert res.metrics["formats"]["onnx-fp16"]["fp16"] == a.meta["fp16"]
    assert res.metrics["fp16_size_ratio"] == arts["onnx-fp32"].meta["size_bytes"] / a.meta["size_bytes"]
    pre = json.loads((root / "artifacts" / "preprocess.json").read_text())
    assert pre["artifacts"] == {"onnx-fp32": "model.fp32.onnx", "onnx-fp16": "model.fp16.onnx"}
    assert pre["input"]["dtype"] == "float32"  # what the fp16 file takes too
    json.dumps(res.metrics)


def test_stage_reports_clipping_as_a_warning(stage_run: dict[str, Any], tmp_path: Path) -> None:
    model = tiny_vit().eval()
    with torch.no_grad():  # a dominant head bias beyond the float16 range: clipped, top-1 unchanged
        model.head.bias[3] = 1e5
    rec = Recorder()
    ctx = stage_context(tmp_path, stage_run["data"], model, kind="export", index=2, reporter=rec)
    res = ExportStage().run(ctx, ExportStageConfig(formats=["onnx-fp16"]))
    meta = res.artifacts[0].meta
    assert meta["fp16"]["clipped_values"] == 1
    (warning,) = meta["warnings"]
    assert "clipped to ±65504" in warning
    assert any(
        line.startswith("  warning: onnx-fp16 (artifacts/model.fp16.onnx): 1 weight") for line in rec.lines
    )


def test_stage_fails_below_the_fp16_tolerance(stage_run: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    real = export_module.parity

    def worse(path, model, x, **kw):
        p = real(path, model, x, **kw)
        return {**p, "top1_agreement": 0.95} if "fp16" in str(path) else p

    monkeypatch.setattr(export_module, "parity", worse)
    ctx = stage_context(tmp_path, stage_run["data"], tiny_vit().eval(), kind="export", index=2)
    with pytest.raises(ExportError) as exc:
        ExportStage().run(ctx, ExportStageConfig(formats=["onnx-fp32", "onnx-fp16"]))
    msg = str(exc.value)
    assert "onnx-fp16 (artifacts/model.fp16.onnx)" in msg
    assert "top1_agreement 0.95 < 0.99" in msg
    assert "tolerances.fp16" in msg


def test_validate_deploys_fp16_on_onnxruntime_cpu(stage_run: dict[str, Any]) -> None:
    root = stage_run["root"]
    target = TargetConfig(name="cpu-ort-fp16", runtime="onnxruntime", artifact="onnx-fp16", precision="fp16",
                          threads=2, batch_sizes=[1, 8], warmup=1, iterations=3)  # fmt: skip
    ctx = stage_context(root, stage_run["data"], stage_run["model"], kind="validate", index=3,
                        teacher=tiny_vit().eval())  # fmt: skip
    ctx.artifacts.update({a.name: a for a in stage_run["result"].artifacts})
    ctx.targets["cpu-ort-fp16"] = target
    out = (
        ValidateStage()
        .run(ctx, ValidateStageConfig(targets=["cpu-ort-fp16"]))
        .metrics["targets"]["cpu-ort-fp16"]
    )
    assert (out["ran"], out["reason"]) == (True, None)
    assert "release_missing" not in out
    assert out["release_artifact"] == "onnx-fp16"
    fp16, fp32 = out["models"]["onnx-fp16"], out["models"]["onnx-fp32"]
    assert (fp16["precision"], fp16["path"]) == ("fp16", "artifacts/model.fp16.onnx")
    assert fp16["size_mb"] < fp32["size_mb"]
    assert abs(fp16["accuracy"] - fp32["accuracy"]) <= 0.01
    assert set(fp16["latency"]) == {"1", "8"}
