"""report.html: self-contained, every table, plots (or a note without matplotlib), renders in Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress._utils.io import atomic_write_json
from compress.cli.main import app
from compress.report import render_html, write_reports
from compress.report.html import pareto_front


def _lat(p50: float) -> dict[str, float | int | str]:
    return {"p50_ms": p50, "p90_ms": p50 * 1.2, "p95_ms": p50 * 1.3, "p99_ms": p50 * 1.6, "mean_ms": p50 * 1.1,
            "std_ms": p50 * 0.1, "min_ms": p50 * 0.9, "max_ms": p50 * 2, "throughput_per_s": 32 / p50 * 1000,
            "iterations": 10, "repeats": 1, "p50_spread_ms": 0.0, "clock": "perf_counter"}  # fmt: skip


def _model(acc: float, p50: float, size: float) -> dict:
    return {
        "accuracy": acc, "agreement": 0.97, "size_mb": size,
        "memory": {"rss_delta_mb": 1.0, "peak_rss_mb": 321.0, "gpu_peak_mb": None, "gpu_method": "not applicable: cpu"},
        "latency": {"1": _lat(p50 / 8), "32": _lat(p50)},
        "roofline": {"by_batch": {"32": {"floor_ms": 0.25, "bound": "compute", "p95_over_floor": p50 * 1.3 / 0.25}}},
    }  # fmt: skip


def fixture_manifest() -> dict:
    qat_history = [
        {"step": 10, "phase": "intervention", "mode": "gradual", "kd": 0.9, "ti": 0.5, "val_accuracy": 0.90},
        {"step": 20, "phase": "intervention", "mode": "gradual", "kd": 0.6, "ti": 0.3, "val_accuracy": 0.92},
        {"step": 30, "phase": "qat", "mode": None, "kd": 0.4, "val_accuracy": 0.93},
    ]
    return {
        "manifest_version": 1, "name": "fixture", "verdict": "fail", "wall_seconds": 12.5,
        "pipeline_file": "pipelines/fixture.yaml", "versions": {"compress": "0.1.0", "torch": "2.14.1"},
        "teacher": {"final": {"params": 1000, "macs": 5000, "val_accuracy": 0.95, "test_accuracy": 0.94}},
        "stages": [
            {"id": "01-distill", "kind": "distill", "status": "ran", "seconds": 3.0,
             "metrics": {"model": {"params": 500, "macs": 2500, "val_accuracy": 0.93, "test_accuracy": 0.92},
                         "history": [{"step": 5, "epoch": 0, "kd": 1.0, "ce": 0.5, "val_accuracy": 0.8},
                                     {"step": 10, "epoch": 1, "kd": 0.5, "ce": 0.3, "val_accuracy": 0.9}]}},
            {"id": "02-qat", "kind": "qat", "status": "cached", "seconds": 2.0,
             "metrics": {"model": {"params": 520, "macs": 2500, "val_accuracy": 0.93, "test_accuracy": 0.925},
                         "history": qat_history}},
            {"id": "03-validate", "kind": "validate", "status": "ran", "seconds": 1.0,
             "metrics": {"split": "test", "targets": {
                 "cpu-ort": {"ran": True, "reason": None, "runtime": "onnxruntime", "device": "cpu", "threads": 2,
                             "release_artifact": "onnx-int8",
                             "models": {"teacher": _model(0.94, 8.0, 0.5), "onnx-fp32": _model(0.925, 4.0, 0.2),
                                        "onnx-int8": _model(0.92, 5.0, 0.05),
                                        "broken": {"error": "runtime failed <badly>"}}},
                 "h100-trt-int8": {"ran": False, "reason": "no CUDA device is visible", "models": {}}}}},
        ],
        "artifacts": {"onnx-int8": {"path": "artifacts/model.int8.onnx", "format": "onnx", "precision": "int8",
                                    "size_bytes": 50000, "sha256": "ab" * 32}},
        "gates": [
            {"name": "accuracy[cpu-ort]", "passed": True, "measured": 0.02, "budget": {"max_drop": 0.03}, "message": "drop 0.02 <= 0.03"},
            {"name": "latency[cpu-ort]@32.p95_ms", "passed": False, "measured": 6.5, "budget": 5.0, "message": "6.500 ms > 5.0 ms"},
        ],
    }  # fmt: skip


def test_pareto_front():
    assert pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (1.0, 0.85)]) == [True, True, False, False]
    assert pareto_front([(1.0, 0.9), (1.0, 0.9)]) == [True, True]  # ties dominate nobody
    assert pareto_front([]) == []


def test_html_has_every_section_and_no_external_resource():
    page = render_html(fixture_manifest())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'class="verdict fail">FAIL' in page and "1 of 2 gates passed" in page
    for text in ("latency[cpu-ort]@32.p95_ms", "6.500 ms &gt; 5.0 ms", "01-distill", "02-qat", "2,500",
                 "artifacts/model.int8.onnx", "Did not run: no CUDA device is visible", "321.0",
                 "not applicable: cpu", "perf_counter", "0.2500 (compute)", "26.0x", "runtime failed &lt;badly&gt;"):
        assert text in page, text
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    imgs = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    # stages, accuracy-vs-latency + latency distribution for cpu-ort, 2 training curves
    assert len(imgs) == 5
    svgs = [base64.b64decode(i).decode() for i in imgs]
    assert all(s.lstrip().startswith("<?xml") and "<svg" in s for s in svgs)
    assert any("Pareto front" in s for s in svgs)
    assert any("intervention (gradual)" in s for s in svgs)  # TI phase marked on the QAT curve


def test_html_without_matplotlib_still_has_tables(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = render_html(fixture_manifest())
    assert "Plots skipped: matplotlib is not installed (pip install &#x27;compress[report]&#x27;)" in page
    assert "data:image" not in page and "latency[cpu-ort]@32.p95_ms" in page and "01-distill" in page


def test_compress_report_rerenders_md_and_html(tmp_path):
    atomic_write_json(tmp_path / "manifest.json", fixture_manifest())
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.md").is_file() and "report.html" in r.stdout
    assert "compress report: fixture" in (tmp_path / "report.html").read_text()


def _non_blank_png(path: Path) -> bool:
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    return colours is None or len(colours) > 10  # None: more colours than maxcolors


def test_report_renders_in_headless_chromium(tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); report.html not rendered")
    write_reports(tmp_path, fixture_manifest())
    shot = tmp_path / "report.png"  # kept under pytest's tmp path as the test's artefact
    subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
         f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert _non_blank_png(shot), f"screenshot {shot} is blank"
