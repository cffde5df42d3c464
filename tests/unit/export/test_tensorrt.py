"""The TensorRT builder against a fake ``tensorrt`` at the API boundary (no TensorRT here)."""

from __future__ import annotations

import json
import sys

import pytest

from compress.errors import ExportError, MissingDependency
from compress.export.tensorrt import ShapeProfile, batch_profiles, build_engine, import_tensorrt
from tests._helpers.fake_tensorrt import make_fake_tensorrt


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "model.int8.onnx"
    p.write_bytes(b"not parsed by the fake")
    return p


def use(monkeypatch, **kw):
    trt = make_fake_tensorrt(**kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


PROFILES = [ShapeProfile("input", (1, 1, 8, 8), (32, 1, 8, 8), (32, 1, 8, 8))]


def test_missing_tensorrt_is_exit_2_with_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ModuleNotFoundError
    with pytest.raises(MissingDependency, match="TensorRT is not installed: pip install tensorrt") as ei:
        import_tensorrt()
    assert ei.value.exit_code == 2


def test_int8_is_strongly_typed_without_precision_flags(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, version="10.9.0")
    out = build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=PROFILES, workspace_mb=512)
    plan = json.loads(out.plan_path.read_bytes())
    assert plan["network_flags"] == 1 << 1  # STRONGLY_TYPED
    assert plan["builder_flags"] == []
    assert plan["workspace"] == 512 << 20
    assert plan["profiles"] == [{"input": [[1, 1, 8, 8], [32, 1, 8, 8], [32, 1, 8, 8]]}]
    side = json.loads(out.sidecar_path.read_text())
    assert side["tensorrt_version"] == "10.9.0" and side["strongly_typed"] is True
    assert side["profiles"][0]["opt"] == [32, 1, 8, 8] and len(side["onnx"]["sha256"]) == 64
    assert out.sidecar_path.name == "m.engine.json"


def test_fp16_on_trt10_uses_the_builder_flag(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, version="10.3.0")
    out = build_engine(onnx_file, tmp_path / "m.engine", precision="fp16", profiles=PROFILES)
    plan = json.loads(out.plan_path.read_bytes())
    assert plan["network_flags"] == 0 and plan["builder_flags"] == ["FP16"]


def test_fp16_on_trt11_needs_an_fp16_onnx(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, version="11.0.0")
    with pytest.raises(ExportError, match="TensorRT 11 removed BuilderFlag.FP16: an FP16 engine needs an FP16 ONNX"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="fp16", profiles=PROFILES)
    out = build_engine(onnx_file, tmp_path / "m.engine", precision="fp16", profiles=PROFILES, onnx_precision="fp16")
    plan = json.loads(out.plan_path.read_bytes())
    assert plan["network_flags"] == 1 << 1 and plan["builder_flags"] == []


def test_old_tensorrt_refused(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, version="8.6.1")
    with pytest.raises(ExportError, match="TensorRT 8.6.1 is too old"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=PROFILES)


def test_parser_errors_are_reported(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, parse_ok=False)
    with pytest.raises(ExportError, match=r"parser rejected model.int8.onnx: In node 3 \(QuantizeLinear\): unsupported zero point; second"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=PROFILES)
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_writes_nothing(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, build_ok=False)
    with pytest.raises(ExportError, match="could not build an engine"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=PROFILES)
    assert list(tmp_path.iterdir()) == [onnx_file]


def test_dynamic_input_without_profile(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch)
    with pytest.raises(ExportError, match=r"dynamic inputs \['input'\] have no optimization profile"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=[])


def test_static_input_needs_no_profile(monkeypatch, onnx_file, tmp_path):
    use(monkeypatch, input_shape=(32, 1, 8, 8))
    out = build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=[])
    assert json.loads(out.plan_path.read_bytes())["profiles"] == []


def test_timing_cache_is_reused_across_builds(monkeypatch, onnx_file, tmp_path):
    trt = use(monkeypatch)
    cache = tmp_path / "timing.cache"
    build_engine(onnx_file, tmp_path / "a.engine", precision="int8", profiles=PROFILES, timing_cache=cache)
    assert cache.read_bytes() == b"+t"
    build_engine(onnx_file, tmp_path / "b.engine", precision="int8", profiles=PROFILES, timing_cache=cache)
    created = [c[1] for c in trt.calls if c[0] == "create_timing_cache"]
    assert created == [b"", b"+t"]  # the second build started from the first one's timings
    assert cache.read_bytes() == b"+t+t"


def test_batch_profiles_from_target_batches():
    p = batch_profiles({"input": ("batch", 1, 8, 8)}, [32, 1, 8])
    assert p == [ShapeProfile("input", (1, 1, 8, 8), (32, 1, 8, 8), (32, 1, 8, 8))]
    with pytest.raises(ExportError, match="symbolic non-batch axes"):
        batch_profiles({"ids": ("batch", "seq")}, [1])
    with pytest.raises(ExportError, match="at least one batch size"):
        batch_profiles({"input": ("batch", 1)}, [])


@pytest.mark.parametrize(("version", "network_flags"), [("10.9.0", 0), ("11.0.0", 1 << 1)])
def test_teacher_engine_is_fp32_from_an_exported_onnx(monkeypatch, tmp_path, version, network_flags):
    import onnx
    import torch

    from compress.export.tensorrt import build_teacher_engine
    from tests._helpers.models import tiny_vit

    use(monkeypatch, version=version)
    out = build_teacher_engine(tiny_vit().eval(), tmp_path, torch.randn(2, 1, 8, 8), batch_sizes=[1, 32])
    assert out.plan_path == tmp_path / "teacher.fp32.engine"
    onnx.checker.check_model(onnx.load(str(tmp_path / "teacher.fp32.onnx")))
    plan = json.loads(out.plan_path.read_bytes())
    assert plan["network_flags"] == network_flags and plan["builder_flags"] == []  # FP32: no precision flag
    assert plan["profiles"] == [{"input": [[1, 1, 8, 8], [32, 1, 8, 8], [32, 1, 8, 8]]}]
    assert out.sidecar["precision"] == "fp32" and out.sidecar["onnx"]["file"] == "teacher.fp32.onnx"


def test_teacher_engine_without_tensorrt_exports_nothing(monkeypatch, tmp_path):
    import torch

    from compress.export.tensorrt import build_teacher_engine
    from tests._helpers.models import tiny_vit

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        build_teacher_engine(tiny_vit(), tmp_path, torch.randn(2, 1, 8, 8), batch_sizes=[1])
    assert list(tmp_path.iterdir()) == []
