"""prune_ on tiny-vit: heads, FFN neurons, MAC targets, minimum widths, errors, callbacks, report."""

from __future__ import annotations

import json

import pytest
import torch

from compress.models import model_from_spec, model_spec
from compress.models.stats import count_macs, count_params
from compress.prune import PruneConfig, PruneReport, prune_
from tests._helpers.models import tiny_vit

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _widths(model: torch.nn.Module) -> list[tuple[int, int, int, int, int]]:
    """(num_heads, q out, o in, fc1 out, fc2 in) per block."""
    return [
        (
            b.attn.num_heads,
            b.attn.q.out_features,
            b.attn.o.in_features,
            b.mlp.fc1.out_features,
            b.mlp.fc2.in_features,
        )
        for b in model.blocks
    ]


def _assert_consistent(model: torch.nn.Module, head_dim: int) -> None:
    for b in model.blocks:
        a = b.attn
        assert a.num_heads >= 1
        assert (
            a.q.out_features
            == a.k.out_features
            == a.v.out_features
            == a.o.in_features
            == a.num_heads * head_dim
        )
        assert b.mlp.fc1.out_features == b.mlp.fc2.in_features >= 1
        assert a.o.out_features == b.mlp.fc2.out_features == model.head.in_features  # residual width kept


def test_head_pruning_updates_num_heads_and_keeps_forward() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    rep = prune_(m, PruneConfig(target={"macs": 0.277}, prune_ffn=False, iterative_steps=2), example_inputs=X)
    assert [w[0] for w in _widths(m)] == [2, 2]
    assert [w[3] for w in _widths(m)] == [64, 64]
    _assert_consistent(m, head_dim=8)
    assert m(X).shape == (4, 10)
    assert rep.blocks == [{"block": i, "heads": 2, "head_dim": 8, "ffn": 64} for i in range(2)]
    assert [s.head_ratio for s in rep.steps][-1] == pytest.approx(0.5)


def test_ffn_pruning_shrinks_fc1_fc2_together_and_keeps_heads() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    before = m.blocks[0].mlp.fc1.weight.detach().clone()
    rep = prune_(m, PruneConfig(target={"macs": 0.2}, prune_heads=False), example_inputs=X)
    w = _widths(m)
    assert all(x[0] == 4 and x[1] == 32 for x in w)
    assert all(x[3] == x[4] < 64 for x in w)
    _assert_consistent(m, head_dim=8)
    # The kept neurons are the highest-L2 rows of the coupled fc1 rows / fc2 columns.
    assert any(torch.equal(m.blocks[0].mlp.fc1.weight[0], row) for row in before)
    assert abs(rep.macs_removed - 0.2) <= 0.02


@pytest.mark.parametrize("target", [0.3, 0.5])
@pytest.mark.parametrize("global_ranking", [False, True])
def test_mac_target_is_reached_within_tolerance(target: float, global_ranking: bool) -> None:
    m = tiny_vit(dim=64, num_heads=4, mlp_dim=128)
    macs0 = count_macs(m, X)
    cfg = PruneConfig(target={"macs": target}, global_ranking=global_ranking)
    rep = prune_(m, cfg, example_inputs=X)
    measured = 1 - count_macs(m, X) / macs0
    assert abs(measured - target) <= 0.02
    assert rep.macs_removed == pytest.approx(measured)
    assert rep.macs_before == macs0
    assert rep.macs_after == count_macs(m, X)
    assert rep.params_after == count_params(m) < rep.params_before
    _assert_consistent(m, head_dim=16)
    # Linear schedule: each step lands near target * s / n and MACs only go down.
    for s in rep.steps:
        assert s.target == pytest.approx(target * s.step / 3)
        assert abs(s.ratio - s.target) <= 0.05
    assert [s.macs for s in rep.steps] == sorted((s.macs for s in rep.steps), reverse=True)


def test_uniform_ranking_prunes_every_block_alike_and_balances_heads_with_ffn() -> None:
    m = tiny_vit(dim=64, num_heads=4, mlp_dim=128)
    rep = prune_(m, PruneConfig(target={"macs": 0.5}), example_inputs=X)
    assert len({(r["heads"], r["ffn"]) for r in rep.blocks}) == 1
    last = rep.steps[-1]
    assert last.head_ratio > 0
    assert last.ffn_ratio > 0
    assert abs(last.head_ratio - last.ffn_ratio) < 0.2


def test_deep_pruning_never_goes_to_zero_width_and_respects_round_to() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    prune_(m, PruneConfig(target={"macs": 0.8}, round_to=8, iterative_steps=2), example_inputs=X)
    for heads, _, _, fc1, _ in _widths(m):
        assert heads >= 1
        assert fc1 >= 8
        assert fc1 % 8 == 0
    assert m(X).isfinite().all()


def test_unreachable_target_fails_before_touching_the_model() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"target\.macs=0\.9 cannot be reached without pruning a layer to zero"
    ) as e:
        prune_(m, PruneConfig(target={"macs": 0.9}), example_inputs=X)
    assert "set target.macs <= 0.84" in str(e.value)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_target_between_two_head_steps_names_the_reachable_values() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    with pytest.raises(
        ValueError, match=r"nearest reachable fractions are 0\.277 and 0\.416.*enable prune_ffn"
    ):
        prune_(m, PruneConfig(target={"macs": 0.35}, prune_ffn=False), example_inputs=X)


def test_taylor_importance_uses_score_fn_gradients() -> None:
    y = torch.arange(4) % 10
    calls: list[int] = []

    def score_fn(model: torch.nn.Module) -> torch.Tensor:
        calls.append(1)
        return torch.nn.functional.cross_entropy(model(X), y)

    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    rep = prune_(
        m, PruneConfig(target={"macs": 0.4}, importance="taylor"), example_inputs=X, score_fn=score_fn
    )
    assert len(calls) == 3  # once per step
    assert abs(rep.macs_removed - 0.4) <= 0.02
    assert all(p.grad is None for p in m.parameters())
    g = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    prune_(g, PruneConfig(target={"macs": 0.4}, importance="taylor", global_ranking=True), example_inputs=X,
           score_fn=score_fn)  # fmt: skip
    _assert_consistent(g, head_dim=8)


def test_taylor_without_score_fn_or_with_a_bad_loss_is_rejected() -> None:
    m = tiny_vit(dim=32)
    with pytest.raises(ValueError, match="needs score_fn"):
        prune_(m, PruneConfig(target={"macs": 0.3}, importance="taylor"), example_inputs=X)
    with pytest.raises(ValueError, match="scalar loss tensor"):
        prune_(m, PruneConfig(target={"macs": 0.3}, importance="taylor"), example_inputs=X,
               score_fn=lambda model: model(X))  # fmt: skip


def test_recover_runs_after_every_step_on_the_pruned_model() -> None:
    seen: list[tuple[int, int, bool]] = []

    def recover(model: torch.nn.Module, step: int) -> None:
        seen.append((step, count_macs(model, X), model.training))
        with torch.no_grad():
            model.head.bias.add_(1.0)  # recovery edits must survive the following steps

    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    m.train()
    rep = prune_(m, PruneConfig(target={"macs": 0.45}, iterative_steps=3), example_inputs=X, recover=recover)
    assert [s for s, _, _ in seen] == [1, 2, 3]
    assert [c for _, c, _ in seen] == [s.macs for s in rep.steps]
    assert torch.allclose(m.head.bias, tiny_vit(dim=32).head.bias + 3.0)
    assert m.training  # mode restored


def test_ignored_layers_keep_their_block_whole() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    rep = prune_(m, PruneConfig(target={"macs": 0.25}, ignored_layers=["blocks.0.*"]), example_inputs=X)
    assert rep.blocks[0] == {"block": 0, "heads": 4, "head_dim": 8, "ffn": 64}
    assert (rep.blocks[1]["heads"], rep.blocks[1]["ffn"]) < (4, 64)
    # Ignoring a consumer (fc2) keeps the neurons it reads as well.
    f = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    prune_(f, PruneConfig(target={"macs": 0.2}, ignored_layers=["blocks.1.mlp.fc2"]), example_inputs=X)
    assert f.blocks[1].mlp.fc2.in_features == 64
    assert f.blocks[0].mlp.fc2.in_features < 64
    with pytest.raises(ValueError, match=r"ignored_layers\[0\]: 'block.9\*' matches no module"):
        prune_(m, PruneConfig(target={"macs": 0.1}, ignored_layers=["block.9*"]), example_inputs=X)


def test_report_is_json_and_matches_the_model_spec() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64)
    rep = prune_(m, PruneConfig(target={"macs": 0.4}, iterative_steps=2), example_inputs=X)
    assert isinstance(rep, PruneReport)
    d = json.loads(json.dumps(rep.to_dict()))
    assert set(d) == {
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "macs_removed",
        "params_removed",
        "steps",
        "blocks",
        "dropped_layers",
        "layer_scores",
        "latency",
    }
    assert [s["step"] for s in d["steps"]] == [1, 2]
    spec = model_spec(m)
    assert [(b["num_heads"], b["head_dim"], b["mlp_dim"]) for b in spec["config"]["blocks"]] == [
        (r["heads"], r["head_dim"], r["ffn"]) for r in rep.blocks
    ]
    rebuilt = model_from_spec(spec)
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(rebuilt.eval()(X), m.eval()(X))


def test_same_seed_same_pruned_model() -> None:
    runs = []
    for _ in range(2):
        m = tiny_vit(dim=32, num_heads=4, mlp_dim=64, seed=3)
        prune_(m, PruneConfig(target={"macs": 0.4}, global_ranking=True), example_inputs=X)
        runs.append(m.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
