"""The export stage: config and ordering errors, the three artifacts, preprocess.json, parity failures."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pydantic
import pytest
import torch

import compress.stages.export as export_module
from compress._utils.progress import Reporter
from compress.errors import ExportError
from compress.stages import STAGES, StageContext
from compress.stages.export import ExportStage, ExportStageConfig
from compress.stages.qat import QATStageConfig
from tests._helpers.models import Recorder, calibrated_qat, digits, tiny_vit


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("export-stage")
    data = digits(root)
    return {"root": root, "data": data, "qat": calibrated_qat(data)}


def _ctx(run_dir: Path, data: Any, model: torch.nn.Module, reporter: Reporter | None = None) -> StageContext:
    return StageContext(
        run_dir=run_dir,
        stage_dir=run_dir / "stages" / "03-export",
        artifacts_dir=run_dir / "artifacts",
        index=2,
        yaml_path="stages[2].export",
        pipeline=SimpleNamespace(data=SimpleNamespace(batch_size=64, eval_batch_size=256)),  # type: ignore[arg-type]
        data=data,
        teacher=model,
        model=model,
        artifacts={},
        history={},
        targets={},
        seed=2,
        reporter=reporter or Recorder(),
    )


def test_config_defaults_and_errors():
    cfg = ExportStageConfig()
    assert cfg.formats == ["onnx-fp32", "onnx-int8", "onnx-int8-u8"]
    assert (cfg.opset, cfg.parity_split) == (17, "val")
    assert (cfg.tolerances.fp32.max_abs_error, cfg.tolerances.fp32.min_top1_agreement) == (1e-4, 0.999)
    assert cfg.tolerances.int8.min_top1_agreement == 0.98
    assert ExportStageConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(pydantic.ValidationError, match="onnx-int8 more than once"):
        ExportStageConfig.model_validate({"formats": ["onnx-int8", "onnx-fp32", "onnx-int8"]})
    with pytest.raises(pydantic.ValidationError, match="at least 1"):
        ExportStageConfig.model_validate({"formats": []})
    with pytest.raises(pydantic.ValidationError, match="onnx-int8-u4"):
        ExportStageConfig.model_validate({"formats": ["onnx-int8-u4"]})
    with pytest.raises(pydantic.ValidationError, match="opset 11 is too old for formats onnx-int8"):
        ExportStageConfig.model_validate({"opset": 11})
    assert ExportStageConfig.model_validate({"opset": 11, "formats": ["onnx-fp32"]}).opset == 11


def test_ordering_int8_needs_qat():
    assert STAGES.get("export") is ExportStage
    assert ExportStage.before == {"validate"}
    problems = ExportStage.check_order(ExportStageConfig(), [("distill", None)])
    assert len(problems) == 1
    assert "onnx-int8 and onnx-int8-u8 need a qat stage before export" in problems[0]
    assert ExportStage.check_order(ExportStageConfig(), [("distill", None), ("qat", QATStageConfig())]) == []
    assert ExportStage.check_order(ExportStageConfig(formats=["onnx-fp32"]), []) == []
    (one,) = ExportStage.check_order(ExportStageConfig(formats=["onnx-fp32", "onnx-int8"]), [])
    assert one.startswith("onnx-int8 needs a qat stage before export")


def test_writes_three_artifacts_with_parity_and_preprocess(setup):
    run_dir = setup["root"] / "run"
    rec = Recorder()
    res = ExportStage().run(_ctx(run_dir, setup["data"], setup["qat"], rec), ExportStageConfig())
    arts = {a.name: a for a in res.artifacts}
    assert list(arts) == ["onnx-fp32", "onnx-int8", "onnx-int8-u8"]
    assert {n: a.path for n, a in arts.items()} == {
        "onnx-fp32": "artifacts/model.fp32.onnx",
        "onnx-int8": "artifacts/model.int8.onnx",
        "onnx-int8-u8": "artifacts/model.int8-u8.onnx",
    }
    assert [a.precision for a in arts.values()] == ["fp32", "int8", "int8"]
    assert [a.meta["flavour"] for a in arts.values()] == ["fp32", "s8s8", "u8s8"]
    for a in arts.values():
        path = run_dir / a.path
        assert a.format == "onnx"
        assert a.meta["opset"] == 17
        assert a.meta["size_bytes"] == path.stat().st_size
        assert a.meta["parity"]["n"] == setup["data"].split_size("val")
        onnx.checker.check_model(onnx.load(str(path)))
    assert arts["onnx-fp32"].meta["parity"]["max_abs_error"] < 1e-4
    assert arts["onnx-int8"].meta["parity"]["top1_agreement"] >= 0.98
    assert arts["onnx-int8"].meta["qdq"]["activation_zero_points"] == [["int8", 0]] or \
        arts["onnx-int8"].meta["qdq"]["activation_zero_points"] == [("int8", 0)]  # fmt: skip
    assert "ort_cpu_parity" in arts["onnx-int8-u8"].meta
    assert "ort_cpu_parity" not in arts["onnx-int8"].meta
    # the FP32 file holds the float weights: no Q/DQ at all
    ops = {n.op_type for n in onnx.load(str(run_dir / arts["onnx-fp32"].path)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    pre = json.loads((run_dir / "artifacts" / "preprocess.json").read_text())
    assert pre["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert pre["output"] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32"}
    assert pre["num_classes"] == 10
    assert pre["preprocess"] == setup["data"].preprocess
    m = res.metrics
    assert set(m["formats"]) == set(arts)
    assert m["preprocess"] == "artifacts/preprocess.json"
    assert m["int8_size_ratio"] > 1.0
    assert res.model is None
    json.dumps(m)  # JSON-able for the manifest


def test_fp32_only_from_a_float_model(setup):
    run_dir = setup["root"] / "fp32-only"
    res = ExportStage().run(
        _ctx(run_dir, setup["data"], tiny_vit().eval()),
        ExportStageConfig(formats=["onnx-fp32"], parity_split="test"),
    )
    assert [a.name for a in res.artifacts] == ["onnx-fp32"]
    assert res.artifacts[0].meta["parity"]["n"] == setup["data"].split_size("test")
    assert "int8_size_ratio" not in res.metrics


def test_parity_examples_limits_the_examples_checked(setup):
    res = ExportStage().run(
        _ctx(setup["root"] / "fp32-few", setup["data"], tiny_vit().eval()),
        ExportStageConfig(formats=["onnx-fp32"], parity_split="test", parity_examples=7),
    )
    assert setup["data"].split_size("test") > 7
    assert res.artifacts[0].meta["parity"]["n"] == 7


def test_int8_from_a_float_model_is_an_export_error(setup):
    with pytest.raises(ExportError, match=r"stages\[2\]\.export.*onnx-int8 needs a quantized model"):
        ExportStage().run(
            _ctx(setup["root"] / "x", setup["data"], tiny_vit()), ExportStageConfig(formats=["onnx-int8"])
        )


def test_parity_beyond_tolerance_fails_naming_artifact_and_numbers(setup, monkeypatch):
    real = export_module.parity

    def worse(path, model, x, **kw):
        p = real(path, model, x, **kw)
        return {**p, "top1_agreement": 0.9} if "int8" in str(path) else p

    monkeypatch.setattr(export_module, "parity", worse)
    with pytest.raises(ExportError) as exc:
        ExportStage().run(_ctx(setup["root"] / "tol", setup["data"], setup["qat"]), ExportStageConfig())
    msg = str(exc.value)
    assert "onnx-int8 (artifacts/model.int8.onnx)" in msg
    assert "top1_agreement 0.9 < 0.98" in msg
    assert "tolerances.int8" in msg
    assert msg.startswith("stage 'export'")


def test_ort_kernel_mismatch_warns_but_passes(setup, monkeypatch):
    real = export_module.parity

    def kernels_off(path, model, x, graph_optimization="basic", **kw):
        p = real(path, model, x, graph_optimization="basic", **kw)
        return {**p, "top1_agreement": 0.5} if graph_optimization == "all" else p

    monkeypatch.setattr(export_module, "parity", kernels_off)
    rec = Recorder()
    res = ExportStage().run(
        _ctx(setup["root"] / "warn", setup["data"], setup["qat"], rec),
        ExportStageConfig(formats=["onnx-int8-u8"]),
    )
    assert res.artifacts[0].meta["ort_cpu_parity"]["top1_agreement"] == 0.5
    assert any("onnx-int8-u8" in line and "bits: 7" in line for line in rec.lines)


def test_torch_fp32_is_the_float_model_reloaded_and_checked(setup):
    """torch-fp32: fake quantizers removed, saved as spec + state dict, reloaded and compared with its source."""
    run_dir = setup["root"] / "torch"
    res = ExportStage().run(_ctx(run_dir, setup["data"], setup["qat"]), ExportStageConfig(formats=["torch-fp32"]))
    (art,) = res.artifacts
    assert (art.name, art.format, art.path) == ("torch-fp32", "torch", "artifacts/model.pt")
    from compress.models import load_model
    from compress.quant import is_quantized

    assert not is_quantized(load_model(run_dir / art.path))
    assert art.meta["parity"]["top1_agreement"] == 1.0
    assert art.meta["parity"]["max_abs_error"] <= 1e-4
