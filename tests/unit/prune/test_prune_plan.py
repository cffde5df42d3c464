"""The dependency-graph layout, exact MAC prices of plans, and the plan search."""

from __future__ import annotations

import pytest
import torch

from compress.models.stats import count_macs
from compress.prune._criteria import CRITERIA
from compress.prune._graph import apply_pruner, find_layout, make_pruner, resolve_ignored
from compress.prune._plan import Planner
from tests._helpers.models import tiny_vit

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _layout(model: torch.nn.Module, *, round_to: int | None = None, scores: bool = False):  # noqa: ANN202
    imp = CRITERIA.get("magnitude").make() if scores else None
    return find_layout(model, X, resolve_ignored(model, []), round_to=round_to, importance=imp)


def test_layout_finds_heads_and_ffn_units_and_blocks_the_residual_stream() -> None:
    m = tiny_vit(depth=2, dim=32, num_heads=4, mlp_dim=64)
    lay = _layout(m)
    assert sorted((u.kind, u.name, u.size) for u in lay.units) == [
        ("ffn", "blocks.0.mlp.fc1", 64), ("ffn", "blocks.1.mlp.fc1", 64),
        ("heads", "blocks.0.attn", 4), ("heads", "blocks.1.attn", 4),
    ]  # fmt: skip
    assert lay.macs == count_macs(m, X)
    assert {"head", "patch_embed"} <= set(lay.ignored)


@pytest.mark.parametrize(("global_ranking", "round_to"), [(False, None), (True, None), (False, 8), (True, 4)])
def test_planned_macs_equal_counted_macs_after_pruning(global_ranking: bool, round_to: int | None) -> None:
    m = tiny_vit(depth=2, dim=32, num_heads=4, mlp_dim=64)
    lay = _layout(m, round_to=round_to, scores=global_ranking)
    planner = Planner(lay, original={u.name: u.size for u in lay.units}, macs0=lay.macs, round_to=round_to,
                      global_ranking=global_ranking, heads=True, ffn=True)  # fmt: skip
    cand = planner.candidate(0.5, 0.3)
    assert cand.plan
    apply_pruner(make_pruner(m, X, CRITERIA.get("magnitude").make(), lay, cand.plan), m, lay, cand.plan)
    assert count_macs(m, X) == pytest.approx(cand.macs, abs=1e-6)
    assert cand.head_ratio == pytest.approx(0.5)
    if round_to:
        assert all(b.mlp.fc1.out_features % round_to == 0 for b in m.blocks)


def test_global_ranking_removes_the_lowest_scored_heads_but_keeps_one_per_layer() -> None:
    m = tiny_vit(depth=2, dim=32, num_heads=4, mlp_dim=64)
    with torch.no_grad():  # make head 2 of block 1 look useless (head width 8)
        a = m.blocks[1].attn
        for lin in (a.q, a.k, a.v):
            lin.weight[16:24].mul_(1e-3)
        a.o.weight[:, 16:24].mul_(1e-3)
    lay = _layout(m, scores=True)
    planner = Planner(lay, original={u.name: u.size for u in lay.units}, macs0=lay.macs, round_to=None,
                      global_ranking=True, heads=True, ffn=False)  # fmt: skip
    assert planner.plan(1 / 8, 0.0) == {"blocks.1.attn": 1}
    assert planner.plan(7 / 8, 0.0) == {"blocks.0.attn": 3, "blocks.1.attn": 3}
    apply_pruner(make_pruner(m, X, CRITERIA.get("magnitude").make(), lay, {"blocks.1.attn": 1}), m, lay,
                 {"blocks.1.attn": 1})  # fmt: skip
    assert a.num_heads == 3
    assert a.q.weight.abs().sum(1).min() > 1e-2  # the scaled-down head is the one that went


def test_search_prefers_the_balanced_plan_on_target_and_caps_intermediate_steps() -> None:
    m = tiny_vit(depth=2, dim=64, num_heads=4, mlp_dim=128)
    lay = _layout(m)
    planner = Planner(lay, original={u.name: u.size for u in lay.units}, macs0=lay.macs, round_to=None,
                      global_ranking=False, heads=True, ffn=True)  # fmt: skip
    found = planner.search(0.5, accept_tol=0.01)
    assert abs(found.best.removed - 0.5) <= 0.01
    assert abs(found.best.head_ratio - found.best.ffn_ratio) <= 0.1
    # FFN alone could also hit 0.3, but the balanced plan removes a head per block too.
    assert planner.search(0.3, accept_tol=0.01).best.head_ratio == pytest.approx(0.25)
    capped = planner.search(0.2, accept_tol=0.01, cap=(0.0, 1.0))
    assert capped.best.head_ratio == 0.0
    assert found.below is not None
    assert found.above is not None
    assert found.below.removed <= 0.5 <= found.above.removed
