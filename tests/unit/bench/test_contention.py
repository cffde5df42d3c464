"""Who else held the GPU while it was timed (compress.bench.contention), and what the report and gates say."""

from __future__ import annotations

import subprocess

import pytest

from compress.bench import GpuUse, contention, gpu_use
from compress.config.schema import GatesConfig
from compress.report import evaluate_gates, render_markdown
from compress.report.html import render_html

UUID = "GPU-58f1a7c9-0d7e-4c55-9a07-1c2b3d4e5f60"
OTHER = "GPU-00000000-1111-2222-3333-444444444444"


def rows(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_this_process_found_by_its_id_is_not_counted() -> None:
    text = rows(f"{UUID}, 100, python3, 900", f"{UUID}, 200, /usr/bin/python3 -m compress run b.yaml, 1200")
    use = contention.parse_compute_apps(text, gpu_uuid=UUID, own_pid=100)
    assert use == GpuUse(
        processes=[contention.GpuProcess(200, "/usr/bin/python3 -m compress run b.yaml", 1200.0)], others=1
    )
    assert use is not None
    assert use.note() is not None
    assert "1 other process held the GPU while it was timed (nvidia-smi: pid 200 " in use.note()


def test_alone_on_the_gpu_has_no_note() -> None:
    use = contention.parse_compute_apps(rows(f"{UUID}, 100, python3, 900"), gpu_uuid=UUID, own_pid=100)
    assert use == GpuUse(processes=[], others=0)
    assert use.note() is None


def test_host_ids_in_a_container_count_one_listed_process_as_this_one() -> None:
    # inside a container nvidia-smi shows host ids: this process (id 7 here) is one of the three
    text = rows(f"{UUID}, 5001, python3, 900", f"{UUID}, 5002, python3, [N/A]", f"{UUID}, 5003, python3, 800")
    use = contention.parse_compute_apps(text, gpu_uuid=UUID.removeprefix("GPU-"), own_pid=7)
    assert use is not None
    assert use.others == 2
    assert [p.pid for p in use.processes] == [5001, 5002, 5003]
    assert use.processes[1].used_mb is None
    assert "2 other processes held the GPU" in (use.note() or "")


def test_other_gpus_rows_are_left_out_and_nothing_listed_is_unknown() -> None:
    text = rows(f"{OTHER}, 300, python3, 900", f"{UUID}, 100, python3, 900")
    assert contention.parse_compute_apps(text, gpu_uuid=UUID, own_pid=100) == GpuUse([], 0)
    assert (
        contention.parse_compute_apps(rows(f"{OTHER}, 300, python3, 900"), gpu_uuid=UUID, own_pid=1) is None
    )
    assert contention.parse_compute_apps("", gpu_uuid=None, own_pid=1) is None
    assert contention.parse_compute_apps("No running processes found\n", gpu_uuid=None, own_pid=1) is None


def test_merged_keeps_the_most_others_and_every_process_once() -> None:
    a = GpuUse([contention.GpuProcess(200, "p", 1.0)], 1)
    b = GpuUse([contention.GpuProcess(200, "p", 2.0), contention.GpuProcess(300, "q", None)], 2)
    m = GpuUse.merged([a, None, b])
    assert m is not None
    assert m.others == 2
    assert [p.pid for p in m.processes] == [200, 300]
    assert GpuUse.merged([None, None]) is None


def test_no_nvidia_smi_or_a_failing_one_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contention.shutil, "which", lambda _: None)
    assert gpu_use("cuda") is None
    monkeypatch.setattr(contention.shutil, "which", lambda _: "/usr/bin/nvidia-smi")

    def failing(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 9, "", "NVIDIA-SMI has failed")

    monkeypatch.setattr(contention.subprocess, "run", failing)
    assert gpu_use(0) is None

    def listing(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            [], 0, rows(f"{UUID}, 1, python3, 5", f"{UUID}, 2, python3, 5"), ""
        )

    monkeypatch.setattr(contention.subprocess, "run", listing)
    monkeypatch.setattr(contention, "_device_uuid", lambda _: None)
    use = gpu_use("cuda:0")  # the device's UUID unknown (no CUDA): every GPU's rows count
    assert use is not None
    assert use.others == 1
    monkeypatch.setattr(contention, "_device_uuid", lambda _: "GPU-0000-other")
    assert gpu_use("cuda:0") is None  # rows of another GPU only: nothing listed on this one


def _manifest(note: str | None) -> dict:
    lat = {
        "32": {
            "p50_ms": 0.7,
            "p90_ms": 0.74,
            "p95_ms": 0.76,
            "p99_ms": 0.8,
            "min_ms": 0.6,
            "max_ms": 0.9,
            "throughput_per_s": 42000.0,
        }
    }
    teacher_lat = {"32": {**lat["32"], "p95_ms": 5.8, "p99_ms": 6.0, "max_ms": 6.1}}
    target = {
        "ran": True, "reason": None, "runtime": "torch-compile", "device": "cuda",
        "release_artifact": "torch-fp32",
        "models": {"teacher": {"accuracy": 0.9, "agreement": 1.0, "size_mb": 90.0, "latency": teacher_lat},
                   "torch-fp32": {"accuracy": 0.89, "agreement": 0.92, "size_mb": 58.0, "latency": lat}},
    }  # fmt: skip
    if note:
        target["timing_note"] = note
    metrics = {"split": "test", "targets": {"h100": target}}
    return {"name": "t", "stages": [{"id": "06-validate", "kind": "validate", "status": "ran", "seconds": 1.0,
                                     "metrics": metrics}]}  # fmt: skip


def test_report_and_latency_gates_say_when_timing_was_shared() -> None:
    note = (
        "2 other processes held the GPU while it was timed (nvidia-smi: pid 1 a, pid 2 b); its latencies..."
    )
    gates = GatesConfig.model_validate({"latency": {"h100": {"batch": 32, "min_speedup": 15, "p95_ms": 1.0}}})
    for g in evaluate_gates(gates, _manifest(note)):
        assert g["message"].endswith(f"(not clean: {note})"), g
    assert not evaluate_gates(gates, _manifest(note))[0]["passed"]  # the verdict is the measured one
    for g in evaluate_gates(gates, _manifest(None)):
        assert "not clean" not in g["message"]
    assert f"**Warning:** {note}." in render_markdown(_manifest(note))
    assert "Warning: 2 other processes held the GPU" in render_html(_manifest(note))
    assert "Warning" not in render_markdown(_manifest(None))


@pytest.mark.gpu
def test_on_a_gpu_this_process_is_among_the_listed_processes() -> None:
    """On the device: with a context of our own, nvidia-smi lists at least this process (others may run)."""
    import shutil

    import torch

    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not installed")
    torch.ones(1, device="cuda")  # hold a context
    use = gpu_use(torch.cuda.current_device())
    if use is None:
        pytest.skip("nvidia-smi lists no compute process here (a container that hides them)")
    assert use.others >= 0
    assert use.others == len(use.processes) or use.others == len(use.processes) - 1
