"""The accuracy-drop summary over several runs (benchmarks/seed_summary.py): every number must follow from
the runs' manifests."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from tests._helpers.benchmarks import import_benchmark


@pytest.fixture(scope="module")
def ss():
    yield from import_benchmark("seed_summary")


def _manifest(seed: int, teacher_only: int, artifact_only: int, *, others: int = 0, n: int = 10000) -> dict:
    teacher_acc = 0.87
    art_acc = teacher_acc - (teacher_only - artifact_only) / n
    lat = {"32": {"p95_ms": 2.0}}
    gpu = {"h100": {"ran": True, "release_artifact": "torch-fp32", "gpu_use": {"others": others},
                    "models": {"teacher": {"accuracy": teacher_acc, "latency": lat},
                               "torch-fp32": {"accuracy": art_acc, "agreement": 0.92,
                                              "latency": {"32": {"p95_ms": 0.125}},
                                              "paired": {"examples": n, "teacher_only": teacher_only,
                                                         "artifact_only": artifact_only}}}},
           "not-run": {"ran": False, "models": {}}}  # fmt: skip
    return {
        "seed": seed,
        "stages": [{"kind": "distill", "metrics": {}}, {"kind": "validate", "metrics": {"targets": gpu}}],
        "gates": [
            {"name": "accuracy[h100]", "budget": {"max_drop": 0.01, "relative": False}},
            {"name": "accuracy[not-run]", "budget": {"max_drop": 0.02, "relative": True}},
        ],
    }


def _write(tmp: Path, m: dict) -> Path:
    d = tmp / f"run{m['seed']}"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_drops_and_statistics_follow_from_the_paired_counts(ss, tmp_path: Path) -> None:
    counts = [(500, 430), (520, 420), (560, 459)]  # drops 0.70, 1.00, 1.01 points
    runs = [
        _write(tmp_path, _manifest(i, b, c, others=1 if i == 2 else 0)) for i, (b, c) in enumerate(counts)
    ]
    summary = ss.summarize([r for d in runs for r in ss.rows_of(d / "manifest.json")])
    assert list(summary) == ["h100 / torch-fp32"]  # the target that did not run is left out
    g = summary["h100 / torch-fp32"]
    drops = [100 * (b - c) / 10000 for b, c in counts]
    assert [r["drop"] for r in g["runs"]] == pytest.approx(drops)
    s = g["stats"]
    assert s["mean_drop"] == pytest.approx(statistics.fmean(drops))
    assert s["sd"] == pytest.approx(statistics.stdev(drops))
    half = 4.302653 * statistics.stdev(drops) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert s["mean_interval"] == pytest.approx((s["mean_drop"] - half, s["mean_drop"] + half), rel=1e-5)
    assert s["next_run_interval"][1] - s["mean_drop"] == pytest.approx(
        half * 2, rel=1e-5
    )  # sqrt(1 + 1/3) * sqrt(3)
    assert s["budget"] == 1.0
    assert s["within_budget"] == 2  # 1.01 is over, 1.00 is not
    assert [r["speedup"] for r in g["runs"]] == pytest.approx([16.0] * 3)
    assert [r["clean"] for r in g["runs"]] == [True, True, False]
    lo, hi = g["runs"][0]["interval"]
    assert lo < 0.70 < hi


def test_the_markdown_and_json_are_written_with_their_command(ss, tmp_path: Path, capsys) -> None:
    runs = [str(_write(tmp_path, _manifest(i, 500 + 30 * i, 430))) for i in range(2)]
    out = tmp_path / "res" / "seeds"
    assert ss.main([*runs, "--out", str(out)]) == 0
    md = (tmp_path / "res" / "seeds.md").read_text()
    assert "python benchmarks/seed_summary.py" in md
    assert "| 1 | 0.8700 | 0.8600 | 1.00 (" in md  # (530 - 430) / 10000
    assert "Within the 1-point budget: 2 of 2 runs." in md
    assert "16.00x |" in md
    assert (
        json.loads((tmp_path / "res" / "seeds.json").read_text())["h100 / torch-fp32"]["stats"]["runs"] == 2
    )
    assert "mean drop **0.85**" in capsys.readouterr().out


def test_over_budget_and_not_clean_runs_are_marked(ss, tmp_path: Path) -> None:
    runs = [_write(tmp_path, _manifest(0, 531, 430, others=2)), _write(tmp_path, _manifest(1, 500, 450))]
    text = ss.render(ss.summarize([r for d in runs for r in ss.rows_of(d)]), "cmd")
    assert "over the budget (1.010)" in text
    assert "16.00x (not clean)" in text
    assert "Within the 1-point budget: 1 of 2 runs." in text


def test_a_run_without_validate_or_manifest_stops_with_its_path(ss, tmp_path: Path) -> None:
    m = _manifest(0, 10, 5)
    m["stages"] = m["stages"][:1]
    d = _write(tmp_path, m)
    with pytest.raises(SystemExit, match="no validate stage"):
        ss.rows_of(d / "manifest.json")
    with pytest.raises(SystemExit, match="no manifest.json"):
        ss.main([str(tmp_path / "missing")])
