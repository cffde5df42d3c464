"""Teacher Intervention: fidelity (identity), gradient masks per mode, schedule, two-step run and resume."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import compress.quant.intervention as ti_module
from compress.distill.features import Tap, capture_features, taps_matching
from compress.quant import (
    InterventionLossesConfig,
    QuantConfig,
    TeacherInterventionConfig,
    block_output_mse,
    calibrate_,
    find_attention_layout,
    intervention_schedule,
    prepare_qat,
    set_quant_enabled_,
    train_with_intervention,
)
from compress.quant.intervention import STEP_MODES, InterventionObjective, mode_at
from compress.train import TrainConfig
from tests._helpers.models import digits, tiny_vit

ONLY_SCORES = InterventionLossesConfig(logits=0, hidden=0, scores=1, attention_output=0)
ALL_TERMS = InterventionLossesConfig(ce=1.0)


class ResidualMlpBlock(nn.Module):
    """``h + mlp(norm(h))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(h)


class ResidualMlpNet(nn.Module):
    """A model without attention: residual MLP blocks in ``model.blocks``, applied in sequence."""

    def __init__(self, dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(64, dim)
        self.blocks = nn.ModuleList(ResidualMlpBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1))
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def _student(teacher: nn.Module, x: torch.Tensor, cfg: QuantConfig | None = None) -> nn.Module:
    s = prepare_qat(copy.deepcopy(teacher), cfg)
    calibrate_(s, lambda m: m(x))
    return s.train()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return digits(tmp_path_factory.mktemp("ti-data"))


# --- fidelity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_vit, ResidualMlpNet], ids=["tiny-vit", "mlp-blocks"])
def test_every_mode_reproduces_the_teacher_exactly_without_quantization(make):
    teacher = make().eval()
    x = torch.randn(16, 1, 8, 8)
    student = _student(teacher, x)
    set_quant_enabled_(student, False)
    obj = InterventionObjective(teacher, ALL_TERMS)
    t_logits, t_feats = obj.capture_teacher(x)
    modes = STEP_MODES if obj.layout is not None else ("none", "block_input")
    for mode in modes:
        logits, feats = obj.student_forward(student, x, t_feats, mode)
        assert torch.equal(logits, t_logits), mode
        terms = obj.loss_terms(logits, feats, t_logits, t_feats, torch.zeros(16, dtype=torch.long))
        assert all(terms[k].item() == 0.0 for k in terms if k not in ("logits", "ce")), (mode, terms)
    # the check can fail: with quantization on, the student's logits differ
    set_quant_enabled_(student, True)
    assert not torch.allclose(obj.student_forward(student, x, t_feats, "none")[0], t_logits)


def test_hooks_are_removed_after_each_forward():
    teacher = tiny_vit().eval()
    x = torch.randn(4, 1, 8, 8)
    student = _student(teacher, x)
    obj = InterventionObjective(teacher, ALL_TERMS, mode="map")
    obj(student, x, torch.zeros(4, dtype=torch.long))
    for m in list(student.modules()) + list(teacher.modules()):
        assert not m._forward_hooks
        assert not m._forward_pre_hooks


# --- gradient masks (METHODS.md §1.2, derived) -----------------------------------------------------


def _grads(
    teacher: nn.Module, student: nn.Module, x: torch.Tensor, mode: str, losses: InterventionLossesConfig
):
    s = copy.deepcopy(student)
    obj = InterventionObjective(teacher, losses, mode=mode)  # type: ignore[arg-type]
    loss, _ = obj(s, x, torch.randint(0, 10, (len(x),)))
    loss.backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in s.named_parameters()}


@pytest.fixture(scope="module")
def quantized_pair():
    torch.manual_seed(0)
    teacher = tiny_vit().eval()
    x = torch.randn(16, 1, 8, 8)
    return teacher, _student(teacher, x), x


def _names(part: str, blocks: int = 2) -> list[str]:
    return [f"blocks.{i}.attn.{part}.weight" for i in range(blocks)]


def test_output_intervention_gives_v_and_wo_no_gradient_and_qk_only_the_score_loss(quantized_pair):
    teacher, student, x = quantized_pair
    full = _grads(teacher, student, x, "output", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "output", ONLY_SCORES)
    for n in _names("v") + _names("o"):
        assert torch.count_nonzero(full[n]) == 0, n
    for n in _names("q") + _names("k"):
        assert torch.count_nonzero(full[n]) > 0, n
        assert torch.allclose(full[n], scores_only[n], atol=1e-7, rtol=1e-5), n
    assert torch.count_nonzero(full["blocks.1.mlp.fc1.weight"]) > 0  # the FFN trains


def test_map_intervention_gives_qk_only_the_score_loss_but_trains_v_and_wo(quantized_pair):
    teacher, student, x = quantized_pair
    full = _grads(teacher, student, x, "map", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "map", ONLY_SCORES)
    for n in _names("q") + _names("k"):
        assert torch.allclose(full[n], scores_only[n], atol=1e-7, rtol=1e-5), n
    for n in _names("v") + _names("o"):
        assert torch.count_nonzero(full[n]) > 0, n


def test_context_intervention_gives_v_no_gradient_and_trains_wo(quantized_pair):
    teacher, student, x = quantized_pair
    full = _grads(teacher, student, x, "context", ALL_TERMS)
    for n in _names("v"):
        assert torch.count_nonzero(full[n]) == 0, n
    for n in _names("o") + _names("q"):
        assert torch.count_nonzero(full[n]) > 0, n


def test_without_intervention_qk_learn_from_every_term(quantized_pair):
    """The mask checks above can fail: without intervention Q/K gradients depend on the other terms."""
    teacher, student, x = quantized_pair
    full = _grads(teacher, student, x, "none", ALL_TERMS)
    scores_only = _grads(teacher, student, x, "none", ONLY_SCORES)
    assert not torch.allclose(
        full["blocks.0.attn.q.weight"], scores_only["blocks.0.attn.q.weight"], rtol=1e-3
    )
    assert torch.count_nonzero(full["blocks.0.attn.v.weight"]) > 0


@pytest.mark.parametrize(("mode", "earlier_gets_grad"), [("output", False), ("map", False), ("none", True)])
def test_score_loss_does_not_reach_earlier_layers_under_intervention(quantized_pair, mode, earlier_gets_grad):
    teacher, student, x = quantized_pair
    g = _grads(teacher, student, x, mode, ONLY_SCORES)
    # block 1's score loss flows back into block 0 only through the (detached) q/k inputs
    earlier = g["blocks.0.mlp.fc2.weight"].abs().sum() + g["patch_embed.weight"].abs().sum()
    assert bool(earlier > 0) is earlier_gets_grad


def test_block_input_intervention_cuts_the_path_between_blocks():
    teacher = ResidualMlpNet().eval()
    x = torch.randn(16, 1, 8, 8)
    student = _student(teacher, x)
    g = _grads(
        teacher, student, x, "block_input", InterventionLossesConfig(hidden=0, scores=0, attention_output=0)
    )
    assert all(
        torch.count_nonzero(g[n]) == 0 for n in g if n.startswith(("blocks.0.", "blocks.1.", "embed."))
    )
    assert torch.count_nonzero(g["blocks.2.mlp.3.weight"]) > 0
    # the hidden-state loss still trains the embedding (its own output vs the FP one)
    g = _grads(
        teacher, student, x, "block_input", InterventionLossesConfig(logits=0, scores=0, attention_output=0)
    )
    assert torch.count_nonzero(g["embed.weight"]) > 0


def test_attention_modes_need_an_attention_layout():
    teacher = ResidualMlpNet().eval()
    assert find_attention_layout(teacher) is None
    assert len(find_attention_layout(tiny_vit())) == 2
    x = torch.randn(4, 1, 8, 8)
    obj = InterventionObjective(teacher, ALL_TERMS, mode="map")
    with pytest.raises(ValueError, match="use mode block_input"):
        obj(_student(teacher, x), x, torch.zeros(4, dtype=torch.long))


# --- schedule --------------------------------------------------------------------------------------


def _code_mode(step: int, s: int) -> str:
    """The paper code's gradual if-chain (main.py), literally."""
    if step < s / 6:
        return "output"
    if step < s / 3:
        return "context"
    return "map"


@pytest.mark.parametrize("s", [1, 5, 6, 7, 50, 60, 120])
def test_gradual_schedule_switches_exactly_where_the_code_does(s):
    n = s + 13
    sched = intervention_schedule("gradual", s, n)
    assert [mode_at(sched, i) for i in range(s)] == [_code_mode(i, s) for i in range(s)]
    assert all(mode_at(sched, i) == "none" for i in range(s, n))
    assert sched[0].from_step == 0
    assert sched[-1].to_step == n
    assert all(a.to_step == b.from_step for a, b in zip(sched, sched[1:], strict=False))


def test_schedule_for_single_modes_and_bad_lengths():
    assert [p.to_dict() for p in intervention_schedule("map", 4, 10)] == [
        {"mode": "map", "from_step": 0, "to_step": 4},
        {"mode": "none", "from_step": 4, "to_step": 10},
    ]
    assert [p.mode for p in intervention_schedule("none", 0, 10)] == ["none"]
    with pytest.raises(ValueError, match="expected 0 <= steps <= 10"):
        intervention_schedule("output", 11, 10)
    assert TeacherInterventionConfig(mode="gradual").step1_steps(540) == 68
    with pytest.raises(ValueError, match="mode none has no intervention step"):
        TeacherInterventionConfig(mode="none", steps=5)


# --- the two-step run ------------------------------------------------------------------------------


def _spy_modes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = InterventionObjective.__call__

    def spy(self, model, x, y):
        seen.append(self.mode)
        return real(self, model, x, y)

    monkeypatch.setattr(InterventionObjective, "__call__", spy)
    return seen


def test_two_step_run_uses_the_mode_of_every_step_and_a_fresh_optimizer(data, monkeypatch):
    teacher = tiny_vit().eval()
    x = data.tensors("train")[0][:64]
    student = _student(teacher, x)
    seen = _spy_modes(monkeypatch)
    fits: list[dict[str, Any]] = []
    real_fit = ti_module.fit

    def fit_spy(model, loss_fn, data, cfg, **kw):
        fits.append({k: kw[k] for k in ("epochs", "max_steps", "seed")})
        return real_fit(model, loss_fn, data, cfg, **kw)

    monkeypatch.setattr(ti_module, "fit", fit_spy)
    train = TrainConfig(epochs=2, lr=5e-4, batch_size=128)  # 1259 train examples -> 10 steps/epoch, N = 20
    res = train_with_intervention(
        student,
        teacher,
        data,
        train,
        TeacherInterventionConfig(mode="gradual", steps=12),
        batch_size=64,
        seed=3,
    )
    assert seen == ["output"] * 2 + ["context"] * 2 + ["map"] * 8 + ["none"] * 8
    assert fits == [{"epochs": 2, "max_steps": 12, "seed": 3}, {"epochs": 1, "max_steps": 8, "seed": 4}]
    assert res.steps == 20
    assert res.metrics()["ti_schedule"] == [
        {"mode": "output", "from_step": 0, "to_step": 2},
        {"mode": "context", "from_step": 2, "to_step": 4},
        {"mode": "map", "from_step": 4, "to_step": 12},
        {"mode": "none", "from_step": 12, "to_step": 20},
    ]
    assert [(r["phase"], r["step"], r["mode"]) for r in res.history] == [
        ("intervention", 10, "map"),
        ("intervention", 12, "map"),
        ("kd_qat", 20, "none"),
    ]


def test_mode_none_is_one_plain_run_with_the_same_loss(data, monkeypatch):
    teacher = tiny_vit().eval()
    student = _student(teacher, data.tensors("train")[0][:64])
    seen = _spy_modes(monkeypatch)
    evals = []
    res = train_with_intervention(
        student,
        teacher,
        data,
        TrainConfig(epochs=1, batch_size=256),
        TeacherInterventionConfig(mode="none", eval_every_steps=2),
        batch_size=64,
        seed=0,
        eval_fn=lambda m: evals.append(1) or {"accuracy": 0.5},
    )
    assert seen == ["none"] * 5
    assert res.step1_steps == 0
    assert [r["step"] for r in res.step_evals] == [2, 4]
    assert len(evals) == 3  # after steps 2 and 4, and at the end of the epoch
    assert {"logits", "hidden", "scores", "attention_output"} <= set(res.history[0])


class _KilledError(Exception):
    pass


def test_a_run_killed_in_step_2_resumes_without_redoing_step_1(data, tmp_path, monkeypatch):
    teacher = tiny_vit(dim=16, mlp_dim=32).eval()
    x = data.tensors("train")[0][:64]
    init = _student(teacher, x)
    train = TrainConfig(epochs=2, lr=5e-4, batch_size=128)  # 10 steps/epoch, N = 20
    ti = TeacherInterventionConfig(mode="output", steps=4)

    def run(ckpt_dir, kill_at: int | None = None) -> tuple[nn.Module, Any, int]:
        student = copy.deepcopy(init)
        calls = {"n": 0}
        real = InterventionObjective.__call__

        def counting(self, model, xb, yb):
            if kill_at is not None and calls["n"] == kill_at:
                raise _KilledError
            calls["n"] += 1
            return real(self, model, xb, yb)

        with monkeypatch.context() as mp:
            mp.setattr(InterventionObjective, "__call__", counting)
            res = train_with_intervention(
                student, teacher, data, train, ti, batch_size=64, seed=1, checkpoint_dir=ckpt_dir
            )
        return student, res, calls["n"]

    reference, _, _ = run(None)
    with pytest.raises(_KilledError):
        run(tmp_path, kill_at=4 + 13)  # in step 2, after its first epoch (10 steps) was checkpointed
    assert len(list(tmp_path.glob("ti_step1.*.pt"))) == 1
    resumed, res, calls = run(tmp_path)
    assert res.resumed_step1
    assert calls == 6  # only step 2's second epoch ran again
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("ti_*"))  # phase checkpoints cleaned up


# --- helpers ---------------------------------------------------------------------------------------


def test_feature_capture_by_pattern_and_per_layer_mse():
    m = tiny_vit().eval()
    x = torch.randn(3, 1, 8, 8)
    taps = {**taps_matching(m, "blocks.*.attn.softmax"), "ctx": Tap("blocks.0.attn.o", "input")}
    with capture_features(m, taps) as f:
        m(x)
    assert torch.allclose(f["blocks.1.attn.softmax"].sum(-1), torch.ones(3, 4, 17))
    assert f["ctx"].shape == (3, 17, 32)
    with pytest.raises(ValueError, match="no module of TinyViT matches 'blocks.*.mlp.nope'"):
        taps_matching(m, "blocks.*.mlp.nope")
    student = _student(m, x)
    set_quant_enabled_(student, False)
    assert block_output_mse(student, m, x) == [0.0, 0.0, 0.0]
    set_quant_enabled_(student, True)
    assert all(v > 0 for v in block_output_mse(student, m, x))
