"""The prune stage with a latency target measured on a real deploy target (ORT CPU), and its gate record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.config.api import load_target
from compress.models.stats import count_macs
from compress.stages.prune import PruneStage, PruneStageConfig
from tests._helpers.models import tiny_vit

REPO = Path(__file__).resolve().parents[3]


def _ctx(tmp_path: Path, model: torch.nn.Module):  # noqa: ANN202
    from tests.unit.stages.test_prune_stage import _ctx as base_ctx

    ctx = base_ctx(tmp_path, model)
    target = load_target(REPO / "deploy" / "cpu-ort-fp32.yaml").model_copy(
        update={"warmup": 1, "iterations": 5}
    )
    ctx.targets = {"cpu-ort-fp32": target}
    return ctx


def test_unmet_latency_budget_keeps_the_most_pruned_model_and_records_a_failed_gate(tmp_path: Path) -> None:
    model = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    cfg = PruneStageConfig(
        target={
            "latency": {"target": "cpu-ort-fp32", "batch": 1, "p95_ms": 1e-6, "step": 0.3, "max_macs": 0.3}
        },
        recover={"epochs": 0},
    )
    ctx = _ctx(tmp_path, model)
    res = PruneStage().run(ctx, cfg)
    (gate,) = res.metrics["gates"]
    assert gate["name"] == "prune.latency[cpu-ort-fp32]@1.p95_ms"
    assert gate["passed"] is False
    assert gate["measured"] > 1e-6
    assert "raise p95_ms" in gate["message"]
    assert res.metrics["latency"]["p95_ms_before"] > 0
    x = ctx.example_inputs(2)
    assert 1 - count_macs(res.model, x[:1]) / count_macs(model, x[:1]) == pytest.approx(0.3, abs=0.02)


def test_met_latency_budget_records_a_passed_gate(tmp_path: Path) -> None:
    model = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    cfg = PruneStageConfig(
        target={"latency": {"target": "cpu-ort-fp32", "batch": 1, "p95_ms": 1e4}}, recover={"epochs": 0}
    )
    res = PruneStage().run(_ctx(tmp_path, model), cfg)
    assert res.metrics["gates"][0]["passed"] is True
    assert res.metrics["steps"] == []
