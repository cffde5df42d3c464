"""Engine formats in the export stage, through a fake ``tensorrt`` at the API boundary."""

from __future__ import annotations

import json
import sys
import textwrap

import pydantic
import pytest

from compress.config import load_config
from compress.errors import ConfigError
from compress.quant import QuantConfig, calibrate_, prepare_qat
from compress.stages.export import ExportStage, ExportStageConfig
from tests._helpers.fake_tensorrt import make_fake_tensorrt
from tests._helpers.models import digits, tiny_vit
from tests.unit.stages.test_export_stage import _ctx


def test_engine_format_needs_its_onnx_source():
    with pytest.raises(pydantic.ValidationError, match="tensorrt-int8 is built from onnx-int8: add onnx-int8 to formats"):
        ExportStageConfig.model_validate({"formats": ["onnx-fp32", "tensorrt-int8"]})


def test_missing_tensorrt_fails_validation_before_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt" else real(n, *a))
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        name: t
        teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
        stages:
          - finetune: {}
          - qat: {}
          - export: {formats: [onnx-int8, tensorrt-int8]}
    """))
    with pytest.raises(ConfigError, match=r"p.yaml:6: stages\[2\].export: formats tensorrt-int8 need TensorRT, which is not installed here: pip install tensorrt"):
        load_config(p)


def test_export_stage_builds_engine_and_records_why_parity_was_skipped(tmp_path, monkeypatch):
    fake = make_fake_tensorrt(version="10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    data = digits(tmp_path)
    model = prepare_qat(tiny_vit(), QuantConfig())
    calibrate_(model, lambda m: [m(x) for _, (x, _) in zip(range(2), data.batches("train", 64), strict=False)])
    cfg = ExportStageConfig.model_validate({"formats": ["onnx-int8", "tensorrt-int8"], "tensorrt": {"batch_sizes": [1, 16]}})
    res = ExportStage().run(_ctx(tmp_path / "run", data, model.eval()), cfg)
    eng = {a.name: a for a in res.artifacts}["tensorrt-int8"]
    assert eng.format == "tensorrt" and eng.path == "artifacts/model.int8.engine"
    plan = json.loads((tmp_path / "run" / eng.path).read_bytes())
    assert plan["network_flags"] == 2 and plan["profiles"] == [{"input": [[1, 1, 8, 8], [16, 1, 8, 8], [16, 1, 8, 8]]}]
    side = json.loads((tmp_path / "run/artifacts/model.int8.engine.json").read_text())
    assert side["onnx"]["file"] == "model.int8.onnx" and side["precision"] == "int8"
    assert eng.meta["parity"] is None
    assert "no CUDA device is visible" in eng.meta["parity_skipped"]
    assert (tmp_path / "run/artifacts/tensorrt.timing-cache").is_file()


def test_validate_builds_the_teacher_as_an_fp32_engine_for_tensorrt_targets(tmp_path, monkeypatch):
    """A tensorrt target times the teacher on the same runtime: validate builds its engine once per batch set."""
    from compress.runtime.tensorrt import TrtSession as TensorRTSession
    from compress.stages.validate import ValidateStage

    fake = make_fake_tensorrt(version="10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    data = digits(tmp_path)
    ctx = _ctx(tmp_path / "run", data, tiny_vit().eval())
    cache: dict = {}
    src, rel = ValidateStage()._teacher_source(ctx, TensorRTSession, cache, [1, 16])
    plan = json.loads(src.read_bytes())
    assert plan["profiles"] == [{"input": [[1, 1, 8, 8], [16, 1, 8, 8], [16, 1, 8, 8]]}]
    assert rel is not None and rel.endswith(".engine")
    again, _ = ValidateStage()._teacher_source(ctx, TensorRTSession, cache, [1, 16])
    assert again == src and len(cache) == 1
