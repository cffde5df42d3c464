"""Latency targets (fake timer), whole-layer dropping, and the transformers directory of a pruned BERT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.models import load_model, save_model
from compress.models.stats import count_macs
from compress.prune import LatencyBudgetError, PruneConfig, prune_
from compress.prune._hf import save_hf_directory
from tests._helpers.models import tiny_vit
from tests.unit.prune._real import bert, bert_ids

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
K = 1e-4  # fake timer: p95 ms = K * MACs per example


def _fake_latency(calls: list[float]):  # noqa: ANN202
    def latency_fn(m: torch.nn.Module) -> float:
        calls.append(K * count_macs(m, X[:1]))
        return calls[-1]

    return latency_fn


def _latency_cfg(p95_ms: float, **kw: float) -> PruneConfig:
    return PruneConfig(target={"latency": {"target": "cpu-ort-fp32", "batch": 1, "p95_ms": p95_ms, **kw}})


def test_latency_loop_prunes_in_steps_until_the_budget_holds() -> None:
    m = tiny_vit(dim=64, num_heads=4, mlp_dim=128)
    base = K * count_macs(m, X[:1])
    calls: list[float] = []
    recovered: list[int] = []
    rep = prune_(
        m,
        _latency_cfg(0.65 * base, step=0.1),
        example_inputs=X,
        latency_fn=_fake_latency(calls),
        recover=lambda _m, s: recovered.append(s),
    )
    assert calls[0] == pytest.approx(base)
    assert len(rep.steps) == 4
    assert recovered == [1, 2, 3, 4]
    assert [round(s.target, 2) for s in rep.steps] == [0.1, 0.2, 0.3, 0.4]
    assert all(s.p95_ms is not None for s in rep.steps)
    assert rep.steps[-1].p95_ms <= 0.65 * base < rep.steps[-2].p95_ms
    assert rep.latency is not None
    assert rep.latency["met"] is True
    assert rep.latency["p95_ms_before"] == pytest.approx(base)


def test_latency_already_within_budget_prunes_nothing() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    base = K * count_macs(m, X[:1])
    rep = prune_(m, _latency_cfg(2 * base), example_inputs=X, latency_fn=_fake_latency([]))
    assert rep.steps == []
    assert rep.macs_removed == 0.0
    assert rep.latency["met"]


def test_unreachable_latency_budget_raises_with_the_measurements_and_keeps_the_most_pruned_model() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    base = K * count_macs(m, X[:1])
    with pytest.raises(
        LatencyBudgetError, match=r"target\.latency: p95 .* > budget .* measured p95 per step"
    ) as ei:
        prune_(
            m,
            _latency_cfg(0.05 * base, step=0.25, max_macs=0.6),
            example_inputs=X,
            latency_fn=_fake_latency([]),
        )
    rep = ei.value.report
    assert rep.latency is not None
    assert rep.latency["met"] is False
    assert rep.latency["macs_removed"] == pytest.approx(0.6, abs=0.02)
    assert 1 - count_macs(m, X[:1]) * K / base == pytest.approx(0.6, abs=0.02)


def test_latency_target_without_a_timer_is_refused() -> None:
    with pytest.raises(ValueError, match="needs latency_fn"):
        prune_(tiny_vit(), _latency_cfg(1.0), example_inputs=X)


def test_layer_drop_removes_the_layer_whose_skip_changes_nothing_and_reloads(tmp_path: Path) -> None:
    m = tiny_vit(depth=4, dim=32, num_heads=4, mlp_dim=64)
    with torch.no_grad():  # block 2 adds nothing to the residual stream: skipping it is free
        for lin in (m.blocks[2].attn.o, m.blocks[2].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    with torch.no_grad():
        before = m.eval()(X)
    rep = prune_(
        m,
        PruneConfig(
            target={"macs": 0.25}, layers={"drop": 1}, prune_heads=False, prune_ffn=True, iterative_steps=1
        ),
        example_inputs=X,
    )
    assert rep.dropped_layers == [2]
    assert rep.layer_scores[2] == pytest.approx(0.0, abs=1e-12)
    assert len(m.blocks) == 3
    assert abs(rep.macs_removed - 0.25) <= 0.02
    save_model(m, tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.pt").eval()(X), m.eval()(X))
        assert before.shape == m(X).shape


def test_bert_layer_drop_updates_the_config_and_reloads(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    rep = prune_(
        m, PruneConfig(target={"macs": 0.5}, layers={"drop": 0.5}, iterative_steps=1), example_inputs=x
    )
    assert len(rep.dropped_layers) == 1
    assert m.net.config.num_hidden_layers == 1
    save_model(m, tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "m.pt").eval()(x), m.eval()(x), atol=1e-6)


def test_ffn_pruned_bert_is_written_as_a_transformers_directory_that_reloads(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    prune_(
        m,
        PruneConfig(target={"macs": 0.2}, prune_heads=False, round_to=8, iterative_steps=1),
        example_inputs=x,
    )
    out = save_hf_directory(m.net, tmp_path / "hf")
    assert out["written"], out
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "d = sys.argv[1]\n"
        "m = AutoModelForSequenceClassification.from_pretrained(d + '/hf', local_files_only=True).eval()\n"
        "x = torch.load(d + '/x.pt', weights_only=True)\n"
        "with torch.no_grad():\n"
        "    torch.save(m(input_ids=x, attention_mask=(x != 0).long()).logits, d + '/y.pt')\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**__import__("os").environ, **env},
    )
    with torch.no_grad():
        expected = m.eval()(x)
    assert torch.allclose(torch.load(tmp_path / "y.pt", weights_only=True), expected, atol=1e-5)


def test_head_pruned_bert_records_why_no_transformers_directory(tmp_path: Path) -> None:
    m, x = bert(), bert_ids()
    prune_(m, PruneConfig(target={"macs": 0.3}, iterative_steps=1), example_inputs=x)
    out = save_hf_directory(m.net, tmp_path / "hf")
    assert out["written"] is False
    assert "heads were pruned" in out["reason"]
    assert not (tmp_path / "hf").exists()
