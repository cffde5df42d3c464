"""Roofline floor: the arithmetic against fake rates, the per-batch table, measured rates on this CPU."""

from __future__ import annotations

import pytest

from compress.bench import roofline
from compress.bench.roofline import device_rates, model_roofline, roofline_floor, weight_bytes
from compress.errors import BadInputError


def test_floor_is_the_larger_term():
    # 3 GFLOP at 1 TFLOP/s = 3 ms; 2 MB at 1 GB/s = 2 ms -> compute-bound, 3 ms
    f = roofline_floor(flops=3e9, bytes_moved=2e6, matmul_flops_per_s=1e12, copy_bytes_per_s=1e9)
    assert (f.compute_ms, f.memory_ms, f.floor_ms, f.bound) == pytest.approx((3.0, 2.0, 3.0, "compute"))
    f = roofline_floor(flops=1e9, bytes_moved=5e6, matmul_flops_per_s=1e12, copy_bytes_per_s=1e9)
    assert (f.floor_ms, f.bound) == (pytest.approx(5.0), "memory")


def test_bad_rates_and_amounts_are_refused():
    with pytest.raises(BadInputError, match="rates must be > 0"):
        roofline_floor(flops=1.0, bytes_moved=1.0, matmul_flops_per_s=0.0, copy_bytes_per_s=1.0)
    with pytest.raises(BadInputError, match=">= 0"):
        roofline_floor(flops=-1.0, bytes_moved=1.0, matmul_flops_per_s=1.0, copy_bytes_per_s=1.0)


def test_weight_bytes_by_precision():
    assert weight_bytes(1000, "fp32") == 4000
    assert weight_bytes(1000, "fp16") == weight_bytes(1000, "bf16") == 2000
    assert weight_bytes(1000, "int8") == 1000
    assert weight_bytes(1000, None) == 4000


def test_model_roofline_per_batch_and_ratio():
    lat = {"1": {"p50_ms": 0.5, "p95_ms": 1.0}, "32": {"p50_ms": 4.0, "p95_ms": 8.0}}
    r = model_roofline(
        macs_per_example=1e6, bytes_moved=4e5, latency=lat, matmul_flops_per_s=1e10, copy_bytes_per_s=1e9
    )
    # batch 1: 2e6 FLOP / 1e10 = 0.2 ms compute, 4e5 B / 1e9 = 0.4 ms memory -> 0.4 ms, memory-bound
    b1 = r["by_batch"]["1"]
    assert (b1["flops"], b1["floor_ms"], b1["bound"]) == (2e6, pytest.approx(0.4), "memory")
    assert b1["p95_over_floor"] == pytest.approx(2.5) and b1["p50_over_floor"] == pytest.approx(1.25)
    # batch 32: FLOPs scale with the batch, weight bytes do not: 6.4 ms compute vs 0.4 ms
    b32 = r["by_batch"]["32"]
    assert (b32["floor_ms"], b32["bound"], b32["p95_over_floor"]) == (pytest.approx(6.4), "compute", pytest.approx(1.25))
    assert r["bytes_moved"] == 4e5 and r["matmul_flops_per_s"] == 1e10


def test_rates_are_measured_once_and_cached(monkeypatch):
    roofline.clear_rate_cache()
    calls = []
    monkeypatch.setattr(roofline, "_matmul_rate", lambda d, p, t: calls.append(("mm", d, p, t)) or 1e9)
    monkeypatch.setattr(roofline, "_copy_rate", lambda d, t: calls.append(("copy", d, t)) or 2e9)
    assert device_rates("cpu", "fp16", threads=2) == (1e9, 2e9)
    assert device_rates("cpu", "fp32", threads=2) == (1e9, 2e9)  # CPU computes fp16 in fp32: same key
    assert calls == [("mm", "cpu", "fp32", 2), ("copy", "cpu", 2)]
    device_rates("cpu", "int8", threads=2)  # the integer GEMM is its own rate
    assert calls[2] == ("mm", "cpu", "int8", 2)
    device_rates("cpu", "fp32", threads=1)
    assert len(calls) == 6
    roofline.clear_rate_cache()
    with pytest.raises(BadInputError, match="cpu or cuda"):
        device_rates("tpu", "fp32")


def test_real_cpu_rates_are_plausible():
    roofline.clear_rate_cache()
    flops, copy = device_rates("cpu", "fp32", threads=1)
    roofline.clear_rate_cache()
    # one core of any x86 CPU of the last decade: 1-500 GFLOP/s fp32, 0.5-200 GB/s memcpy
    assert 1e9 < flops < 5e11
    assert 5e8 < copy < 2e11


def test_gemm_precision_per_device():
    assert [roofline.gemm_precision("cpu", p) for p in ("fp32", "fp16", "int4", "int8", None)] == [
        "fp32", "fp32", "fp32", "int8", "fp32"
    ]
    assert [roofline.gemm_precision("cuda", p) for p in ("fp16", "int8", None)] == ["fp16", "int8", "fp32"]


def test_cpu_int8_rate_is_onnxruntime_integer_gemm_or_the_float_rate(monkeypatch):
    seen = []

    def fake_ort(n, precision, threads):
        seen.append((precision, threads))
        return {"fp32": 2e9, "int8": 7e13}[precision]

    monkeypatch.setattr(roofline, "_ort_gemm_rate", fake_ort)
    assert roofline._matmul_rate("cpu", "int8", 1) == 7e13  # above any real CPU fp32 GEMM
    assert seen == [("fp32", 1), ("int8", 1)]
    # without a fast integer kernel the float rate bounds the int8 file
    monkeypatch.setattr(roofline, "_ort_gemm_rate", lambda n, p, t: {"fp32": 9e13, "int8": 1e9}[p])
    assert roofline._matmul_rate("cpu", "int8", 1) == 9e13


def test_real_onnxruntime_gemm_rates_are_plausible():
    for precision in ("fp32", "int8"):
        rate = roofline._ort_gemm_rate(128, precision, 1)
        assert 1e8 < rate < 5e12, (precision, rate)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_gemm_model_uses_the_ir_version_of_its_opset(monkeypatch, precision):
    """An onnx newer than onnxruntime writes an IR version the runtime refuses (onnx IR 14 against ORT
    1.30's 13 on the H100 machine); the probe model asks only for what opset 13 needs."""
    import onnx
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession

    def spy(model_bytes, *a, **k):
        seen.append(onnx.load_from_string(model_bytes).ir_version)
        return real(model_bytes, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    assert roofline._ort_gemm_rate(64, precision, threads=1) > 0
    assert seen == [7]  # opset 13 came with IR 7 (onnx 1.8)
