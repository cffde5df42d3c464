"""Which clock times a session, and GPU memory on CPU targets (not applicable, never 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.bench import GpuMemoryProbe, measure_latency
from compress.bench.latency import resolve_clock
from compress.errors import BadInputError
from compress.runtime import RUNTIMES


class Session:
    def __init__(self, device: str) -> None:
        self.device = device

    def run(self, inputs):  # noqa: ANN001, ANN201
        return [inputs["input"]]

    def synchronize(self) -> None:
        pass


def make(b: int) -> dict[str, np.ndarray]:
    return {"input": np.zeros((b, 2), np.float32)}


def test_cpu_sessions_use_perf_counter():
    stats = measure_latency(Session("cpu"), make, batch_sizes=[1], warmup=0, iterations=3)
    assert stats[1].clock == "perf_counter" and stats[1].to_dict()["clock"] == "perf_counter"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_cuda_session_without_cuda_falls_back_and_explicit_cuda_event_is_refused():
    assert resolve_clock("auto", "cuda") == "perf_counter"
    with pytest.raises(BadInputError, match="'cuda_event' needs CUDA"):
        measure_latency(Session("cuda"), make, batch_sizes=[1], warmup=0, iterations=1, clock="cuda_event")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sessions_use_cuda_events():
    stats = measure_latency(Session("cuda"), make, batch_sizes=[1], warmup=1, iterations=3)
    assert stats[1].clock == "cuda_event" and stats[1].min_ms >= 0


def test_unknown_clock_is_reported():
    with pytest.raises(BadInputError, match="clock must be one of auto, perf_counter, cuda_event"):
        measure_latency(Session("cpu"), make, batch_sizes=[1], warmup=0, iterations=1, clock="tsc")


def test_gpu_memory_on_cpu_is_not_applicable_not_zero():
    probe = GpuMemoryProbe("cpu", "torch")
    probe.start()
    out = probe.stop()
    assert out["gpu_peak_mb"] is None and out["gpu_method"].startswith("not applicable")


def test_runtimes_declare_their_gpu_allocator():
    assert RUNTIMES.get("torch").gpu_allocator == "torch"
    assert RUNTIMES.get("torch-compile").gpu_allocator == "torch"
    assert RUNTIMES.get("onnxruntime").gpu_allocator == "external"
    assert RUNTIMES.get("tensorrt").gpu_allocator == "external"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_allocator_peak_counts_only_the_work():
    keep = torch.zeros(10_000_000, device="cuda")  # 40 MB held before: not counted
    probe = GpuMemoryProbe("cuda", "torch")
    probe.start()
    x = torch.ones(25_000_000, device="cuda")  # 100 MB
    del x
    out = probe.stop()
    assert out["gpu_method"] == "torch_max_memory_allocated"
    assert 99 < out["gpu_peak_mb"] < 110
    del keep
