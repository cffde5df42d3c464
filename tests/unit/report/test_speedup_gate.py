"""``min_speedup``: the teacher's p95 over the release artifact's, same target and batch; fails closed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compress.config.schema import GatesConfig
from compress.report import evaluate_gates


def _manifest(teacher_p95: float | None = 30.0, artifact_p95: float = 3.0, teacher_error: str | None = None):
    def lat(p95: float) -> dict:
        return {"32": {"p50_ms": p95 * 0.9, "p95_ms": p95, "p99_ms": p95 * 1.1, "throughput_per_s": 1.0}}

    teacher = {"error": teacher_error} if teacher_error else {"accuracy": 0.9, "latency": lat(teacher_p95)}
    target = {
        "ran": True,
        "release_artifact": "torch-fp32",
        "models": {"teacher": teacher, "torch-fp32": {"accuracy": 0.9, "latency": lat(artifact_p95)}},
    }
    return {"stages": [{"id": "05-validate", "metrics": {"targets": {"h100": target}}}]}


def _gate(budget: dict, manifest: dict) -> dict:
    res = evaluate_gates(GatesConfig.model_validate({"latency": {"h100": budget}}), manifest)
    return {r["name"]: r for r in res}["latency[h100]@32.min_speedup"]


def test_speedup_at_or_above_budget_passes_below_fails():
    ok = _gate({"batch": 32, "min_speedup": 10}, _manifest(30.0, 3.0))
    assert ok["passed"]
    assert ok["measured"] == pytest.approx(10.0)
    assert "10.00x >= 10" in ok["message"]
    bad = _gate({"batch": 32, "min_speedup": 15}, _manifest(30.0, 3.0))
    assert not bad["passed"]
    assert "10.00x < 15" in bad["message"]


def test_teacher_not_timed_fails_with_its_error():
    r = _gate({"batch": 32, "min_speedup": 2}, _manifest(teacher_error="runtime failed: out of memory"))
    assert not r["passed"]
    assert r["measured"] is None
    assert "out of memory" in r["message"]


def test_unvalidated_target_fails_closed():
    res = evaluate_gates(
        GatesConfig.model_validate({"latency": {"elsewhere": {"batch": 32, "min_speedup": 2}}}), _manifest()
    )
    assert [(r["name"], r["passed"]) for r in res] == [("latency[elsewhere]@32.min_speedup", False)]


def test_budget_needs_some_limit_and_a_positive_speedup():
    with pytest.raises(ValidationError, match="min_speedup"):
        GatesConfig.model_validate({"latency": {"h100": {"batch": 32}}})
    with pytest.raises(ValidationError):
        GatesConfig.model_validate({"latency": {"h100": {"batch": 32, "min_speedup": 0}}})
