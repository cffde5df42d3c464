"""KD loss against a hand computation; students built from teachers by depth."""

from __future__ import annotations

import math

import pytest
import torch

from compress.distill import LossesConfig, kd_loss, kd_objective, soft_cross_entropy, student_by_depth
from tests._helpers.models import tiny_vit


def test_kd_loss_matches_hand_computation():
    zs = torch.tensor([[1.0, 0.0, -1.0]])
    zt = torch.tensor([[0.5, 0.5, 0.0]])
    t = 2.0
    ps = [math.exp(v / t) for v in (1.0, 0.0, -1.0)]
    ps = [p / sum(ps) for p in ps]
    pt = [math.exp(v / t) for v in (0.5, 0.5, 0.0)]
    pt = [p / sum(pt) for p in pt]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert kd_loss(zs, zt, t).item() == pytest.approx(t * t * kl, rel=1e-5)
    assert kd_loss(zt, zt, t).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradient_does_not_reach_teacher():
    zs = torch.randn(4, 5, requires_grad=True)
    zt = torch.randn(4, 5, requires_grad=True)
    kd_loss(zs, zt, 4.0).backward()
    assert zs.grad is not None and zt.grad is None


def test_soft_cross_entropy_hand():
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[0.0, 100.0]])
    assert soft_cross_entropy(zs, zt).item() == pytest.approx(math.log(2), rel=1e-6)


def test_objective_weights_terms():
    teacher = tiny_vit()
    student = tiny_vit(seed=1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    only_ce = kd_objective(teacher, LossesConfig(kd=None, ce={"weight": 1.0}))
    loss, terms = only_ce(student, x, y)
    assert set(terms) == {"ce"} and loss.item() == pytest.approx(torch.nn.functional.cross_entropy(student(x), y).item(), rel=1e-5)
    both = kd_objective(teacher, LossesConfig(kd={"temperature": 4, "weight": 0.9}, ce={"weight": 0.1}))
    loss, terms = both(student, x, y)
    assert loss.item() == pytest.approx(0.9 * terms["kd"] + 0.1 * terms["ce"], rel=1e-5)


def test_student_by_depth_copies_kept_blocks():
    teacher = tiny_vit(depth=4)
    s = student_by_depth(teacher, [0, 2])
    assert len(s.blocks) == 2
    for a, b in zip(s.blocks[1].parameters(), teacher.blocks[2].parameters()):
        assert torch.equal(a, b)
    assert torch.equal(s.head.weight, teacher.head.weight)
    s.blocks[0].attn.q.weight.data.zero_()
    assert teacher.blocks[0].attn.q.weight.abs().sum() > 0  # a copy, not shared
    with pytest.raises(ValueError, match=r"keep_layers \[7\] out of range: the teacher has 4 layers"):
        student_by_depth(teacher, [0, 7])
