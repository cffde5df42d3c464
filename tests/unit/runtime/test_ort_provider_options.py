"""ONNX Runtime's CUDA provider computes FP32 in FP32 unless the target asks for TF32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compress.export import export_onnx
from compress.runtime import open_session
from compress.runtime.onnxruntime import OrtSession, provider_options
from tests._helpers.models import tiny_vit

ort = pytest.importorskip("onnxruntime")


def test_provider_options_per_device_and_precision() -> None:
    assert provider_options("cpu", None) == [{}]
    assert provider_options("cpu", "tf32") == [{}]
    assert provider_options("cuda", "fp32") == [{"use_tf32": "0"}, {}]
    assert provider_options("cuda", None) == [{"use_tf32": "0"}, {}]
    assert provider_options("cuda", "fp16") == [{"use_tf32": "0"}, {}]
    assert provider_options("cuda", "tf32") == [{"use_tf32": "1"}, {}]


@pytest.mark.parametrize(("precision", "tf32"), [("fp32", "0"), ("tf32", "1")])
def test_cuda_session_is_opened_with_the_options(
    precision: str, tf32: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session ONNX Runtime opens on cuda receives ``use_tf32`` (ORT itself is faked: no GPU here)."""
    torch.manual_seed(0)
    path = export_onnx(tiny_vit().eval(), tmp_path / "m.onnx", torch.randn(2, 1, 8, 8))
    seen: dict[str, Any] = {}
    real = ort.InferenceSession

    class FakeCudaSession:
        def __init__(self, model: str, sess_options: Any = None, providers: Any = None, **kw: Any) -> None:
            seen.update(providers=providers, **kw)
            self._s = real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name: str) -> Any:
            return getattr(self._s, name)

    monkeypatch.setattr(OrtSession, "_can_run_here_impl", classmethod(lambda cls, device: (True, "")))
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    with open_session("onnxruntime", path, device="cuda", precision=precision) as sess:
        out = sess.run({sess.inputs[0].name: torch.randn(3, 1, 8, 8).numpy()})
    assert out[0].shape[0] == 3
    assert seen["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert seen["provider_options"] == [{"use_tf32": tf32}, {}]
