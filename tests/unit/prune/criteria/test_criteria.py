"""Importance criteria: the registry contract, L1 vs L2 magnitude, bn_scale, head_gate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from compress.prune import CRITERIA, PruneConfig, list_criteria, prune_
from tests._helpers.models import tiny_vit
from tests.unit.prune._real import bert, bert_ids, resnet, resnet_x

X = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))


def _loss(m: torch.nn.Module) -> list[torch.Tensor]:
    return [F.cross_entropy(m(X[:4]), Y[:4]), F.cross_entropy(m(X[4:]), Y[4:])]


def test_every_config_name_is_registered_and_builds() -> None:
    literal = PruneConfig.model_fields["importance"].annotation.__args__  # type: ignore[union-attr]
    assert sorted(literal) == list_criteria() == ["bn_scale", "head_gate", "magnitude", "taylor"]
    for name in literal:
        c = CRITERIA.get(name)
        assert callable(c.make(p=1))
    assert CRITERIA.get("taylor").needs_grad
    assert CRITERIA.get("head_gate").needs_grad
    assert not CRITERIA.get("magnitude").needs_grad
    assert not CRITERIA.get("bn_scale").needs_grad


@pytest.mark.parametrize("name", ["magnitude", "taylor", "head_gate"])
def test_each_transformer_criterion_prunes_to_target_deterministically(name: str) -> None:
    out = []
    for _ in range(2):
        m = tiny_vit(dim=32, num_heads=4, mlp_dim=64, seed=5)
        rep = prune_(
            m,
            PruneConfig(target={"macs": 0.3}, importance=name, iterative_steps=1),
            example_inputs=X,
            score_fn=_loss,
        )
        assert abs(rep.macs_removed - 0.3) <= 0.02
        assert torch.isfinite(m(X)).all()
        out.append(m.state_dict())
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_l1_and_l2_magnitude_rank_differently() -> None:
    kept = {}
    for p in (1, 2):
        m = tiny_vit(dim=32, num_heads=4, mlp_dim=64, seed=0)
        with torch.no_grad():
            fc1, fc2 = m.blocks[0].mlp.fc1, m.blocks[0].mlp.fc2
            fc1.weight.zero_(), fc1.bias.zero_(), fc2.weight.zero_()
            fc1.weight[:32] = 0.1  # neurons 0..31: many small weights (large L1, small L2)
            fc1.weight[32:, 0] = 0.6  # neurons 32..63: one large weight (small L1, large L2)
        prune_(
            m,
            PruneConfig(
                target={"macs": 0.1}, prune_heads=False, p=p, ignored_layers=["blocks.1.*"], iterative_steps=1
            ),
            example_inputs=X,
        )
        w = m.blocks[0].mlp.fc1.weight
        kept[p] = int((w[:, 0] == 0.6).sum())
    assert kept[2] > kept[1]  # L2 keeps the peaked rows, L1 the spread ones


def test_bn_scale_removes_channels_with_the_smallest_gamma() -> None:
    m, x = resnet(), resnet_x()
    bn = m.net.layer1[0].bn1
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.weight[:16] = 1e-3
    prune_(m, PruneConfig(target={"macs": 0.05}, importance="bn_scale", iterative_steps=1), example_inputs=x)
    g = m.net.layer1[0].bn1.weight
    assert g.numel() < 64
    assert (g == 1.0).sum() == min(g.numel(), 48)  # the small-gamma channels went first


def test_bn_scale_refuses_models_without_batchnorm_or_with_attention() -> None:
    with pytest.raises(ValueError, match="bn_scale .* attention layers"):
        prune_(bert(), PruneConfig(target={"macs": 0.2}, importance="bn_scale"), example_inputs=bert_ids())


def test_head_gate_prunes_the_head_whose_context_does_not_matter() -> None:
    m = tiny_vit(dim=32, num_heads=4, mlp_dim=64, seed=0)
    hd = 8
    with torch.no_grad():
        for b in m.blocks:  # head 2's context is never read: its gate gradient is 0
            b.attn.o.weight[:, 2 * hd : 3 * hd] = 0.0
            b.attn.q.weight[2 * hd : 3 * hd] *= 5  # while its weights look important by magnitude
            b.attn.v.weight[2 * hd : 3 * hd] *= 5
    marked = [b.attn.v.weight[2 * hd].clone() for b in m.blocks]
    prune_(
        m,
        PruneConfig(target={"macs": 0.14}, importance="head_gate", prune_ffn=False, iterative_steps=1),
        example_inputs=X,
        score_fn=_loss,
    )
    for b, row in zip(m.blocks, marked, strict=True):
        assert b.attn.num_heads == 3
        assert not any(torch.equal(r, row) for r in b.attn.v.weight)  # head 2 is gone


def test_head_gate_on_bert_scores_heads_through_the_hf_output_dense() -> None:
    m, x = bert(), bert_ids(6)
    y = torch.tensor([0, 1, 2, 3, 4, 0])

    def loss(mm: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(mm(x), y)

    rep = prune_(
        m,
        PruneConfig(target={"macs": 0.3}, importance="head_gate", iterative_steps=1),
        example_inputs=x,
        score_fn=loss,
    )
    assert abs(rep.macs_removed - 0.3) <= 0.02
