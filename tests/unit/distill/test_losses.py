"""Each distillation loss against a hand computation on tiny tensors (METHODS.md §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from compress.distill.losses import (
    MASKED_LOGIT,
    attention_kl,
    attention_score_mse,
    attention_scores,
    cosine_loss,
    dkd_loss,
    dkd_parts,
    dkd_warmup_factor,
    hidden_mse,
    minilmv2_relation_kl,
    relation_kl,
    split_relation_heads,
    value_relation_kl,
)


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(v) for v in xs]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# --- DKD -------------------------------------------------------------------------------------------


def test_dkd_parts_match_hand_computation():
    zs, zt, t = [1.0, 0.0, -1.0], [0.5, 0.5, 0.0], 2.0
    ps, pt = _softmax([v / t for v in zs]), _softmax([v / t for v in zt])
    # target class 0: binary (target, rest) and the distribution over classes 1, 2
    tckd = t * t * _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = t * t * _kl(_softmax([v / t for v in zt[1:]]), _softmax([v / t for v in zs[1:]]))
    got_t, got_n = dkd_parts(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([0]), t)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    total = dkd_loss(
        torch.tensor([zs]), torch.tensor([zt]), torch.tensor([0]), alpha=1.0, beta=8.0, temperature=t
    )
    assert total.item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)


def test_dkd_equals_mdistiller_formula_and_stays_finite_for_a_confident_teacher():
    torch.manual_seed(0)
    zs, zt, y, t = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,)), 4.0
    gt = F.one_hot(y, 5).float()
    # mdistiller dkd_loss, transcribed: cat_mask, torch.log, target logit minus 1000
    ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * t * t / 6
    nckd = (
        F.kl_div(F.log_softmax(zs / t - 1000 * gt, 1), F.softmax(zt / t - 1000 * gt, 1), reduction="sum")
        * t
        * t
        / 6
    )
    got = dkd_parts(zs, zt, y, t)
    assert got[0].item() == pytest.approx(tckd.item(), rel=1e-4)
    assert got[1].item() == pytest.approx(nckd.item(), rel=1e-4)
    confident = torch.tensor([[200.0, 0.0, 0.0]])
    tc, nc = dkd_parts(torch.zeros(1, 3, requires_grad=True), confident, torch.tensor([0]), 1.0)
    assert torch.isfinite(tc) and torch.isfinite(nc)


def test_dkd_warmup_factor_counts_from_one():
    assert [dkd_warmup_factor(e, 20) for e in (1, 10, 20, 40)] == [0.05, 0.5, 1.0, 1.0]
    assert dkd_warmup_factor(1, 0) == 1.0


# --- hidden states and cosine ----------------------------------------------------------------------


def test_hidden_mse_hand_and_teacher_detached():
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.zeros(1, 2, requires_grad=True)
    loss = hidden_mse(s, t)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="project the student side first"):
        hidden_mse(torch.zeros(1, 3), torch.zeros(1, 2))


def test_cosine_loss_hand_with_token_mask():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]])
    # token losses: 1 - 0 = 1, 1 - 1 = 0, and a padded token that must not count
    mask = torch.tensor([[True, True, False]])
    assert cosine_loss(s, t, mask).item() == pytest.approx(0.5, abs=1e-6)
    assert cosine_loss(s, t).item() == pytest.approx((1 + 0 + (1 + 1 / math.sqrt(2))) / 3, rel=1e-5)
    maps = torch.tensor([[[[1.0]], [[0.0]]]])  # (B=1, C=2, 1, 1)
    assert cosine_loss(maps, maps).item() == pytest.approx(0.0, abs=1e-6)


# --- attention -------------------------------------------------------------------------------------


def test_attention_scores_scale_and_mask():
    q = torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]])  # (B=1, H=1, L=2, d=2)
    k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    s = attention_scores(q, k)
    r2 = math.sqrt(2)
    assert s[0, 0].flatten().tolist() == pytest.approx([1 / r2, 2 / r2, 0.0, 2 / r2], rel=1e-6)
    masked = attention_scores(q, k, torch.tensor([[True, False]]))
    assert masked[0, 0, :, 1].tolist() == [MASKED_LOGIT, MASKED_LOGIT]


def test_attention_score_mse_zeroes_masked_entries_and_averages_heads():
    s = torch.tensor([[[[1.0, 7.0], [3.0, 9.0]], [[0.0, 0.0], [2.0, 5.0]]]])  # (1, 2 heads, 2, 2)
    t = torch.zeros_like(s)
    mask = torch.tensor([[True, False]])  # key 1 is padding: its column does not count
    # per head: mean over its 4 entries; masked entries are 0 in both. Heads averaged.
    head0 = (1 + 0 + 9 + 0) / 4
    head1 = (0 + 0 + 4 + 0) / 4
    assert attention_score_mse(s, t, mask).item() == pytest.approx((head0 + head1) / 2)
    # TinyBERT's convention without a mask: teacher entries at the mask value are zeroed on both sides
    t2 = t.clone()
    t2[..., 1] = MASKED_LOGIT
    assert attention_score_mse(s, t2).item() == pytest.approx((head0 + head1) / 2)
    with pytest.raises(ValueError, match="equal head counts"):
        attention_score_mse(s, s[:, :1])


def test_relation_kl_hand_with_padded_query_row():
    s = torch.tensor([[[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0], [9.0, 9.0, 9.0]]]])  # (1, 1, 3, 3)
    t = torch.tensor([[[[1.0, 0.0, -5.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]]])
    mask = torch.tensor([[True, True, False]])  # token 2 padded: its key gets prob 0, its row is skipped
    rows = [_kl(_softmax(t[0, 0, i, :2].tolist()), _softmax(s[0, 0, i, :2].tolist())) for i in range(2)]
    assert relation_kl(s, t, mask).item() == pytest.approx(sum(rows) / 2, rel=1e-5)
    full = [_kl(_softmax(t[0, 0, i].tolist()), _softmax(s[0, 0, i].tolist())) for i in range(3)]
    assert relation_kl(s, t).item() == pytest.approx(sum(full) / 3, rel=1e-5)
    assert attention_kl(s, t, mask).item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_value_relation_kl_hand():
    # one head, two tokens; student head width 1, teacher head width 2 (widths may differ)
    vs = torch.tensor([[[[1.0], [2.0]]]])
    vt = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    rs = [[1.0, 2.0], [2.0, 4.0]]  # V Vᵀ / √1
    rt = [[1 / math.sqrt(2), 0.0], [0.0, 1 / math.sqrt(2)]]
    want = sum(_kl(_softmax(rt[i]), _softmax(rs[i])) for i in range(2)) / 2
    assert value_relation_kl(vs, vt).item() == pytest.approx(want, rel=1e-5)


def test_relation_heads_concatenate_then_resplit():
    x = torch.arange(16.0).reshape(1, 2, 2, 4)  # (B, H=2, L=2, d=4): width 8
    one = split_relation_heads(x, 1)
    assert one.shape == (1, 1, 2, 8)
    assert one[0, 0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # token 0: head 0 then head 1
    four = split_relation_heads(x, 4)
    assert four.shape == (1, 4, 2, 2) and four[0, 2, 0].tolist() == [8, 9]
    with pytest.raises(ValueError, match="relation_heads 3 does not divide the attention width 8"):
        split_relation_heads(x, 3)


def test_minilmv2_relation_kl_hand_with_different_head_counts():
    torch.manual_seed(0)
    xs = torch.randn(1, 2, 3, 2)  # student: 2 heads x 2 = width 4
    xt = torch.randn(1, 4, 3, 2)  # teacher: 4 heads x 2 = width 8
    got = minilmv2_relation_kl(xs, xt, relation_heads=2)
    want = 0.0
    s_cat = xs.transpose(1, 2).reshape(3, 4)
    t_cat = xt.transpose(1, 2).reshape(3, 8)
    for r in range(2):  # relation heads: student width 2 each, teacher width 4 each
        a, b = s_cat[:, 2 * r : 2 * r + 2], t_cat[:, 4 * r : 4 * r + 4]
        rs, rt = (a @ a.T / math.sqrt(2)).tolist(), (b @ b.T / math.sqrt(4)).tolist()
        want += sum(_kl(_softmax(rt[i]), _softmax(rs[i])) for i in range(3))
    assert got.item() == pytest.approx(want / (2 * 3), rel=1e-5)
    assert minilmv2_relation_kl(xt, xt, relation_heads=4).item() == pytest.approx(0.0, abs=1e-6)
