"""DistillObjective on real tiny architectures: terms finite, gradients reach the student and the
projections but never the teacher; bad YAML gives ConfigError naming the YAML key."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from compress.distill import DistillObjective, LossesConfig, kd_objective
from compress.distill.config import FEATURE_TERMS
from compress.errors import ConfigError
from tests._helpers.models import tiny_vit

PATH = "stages[1].distill.losses"
EPATH = re.escape(PATH)

ALL_TERMS = {
    "kd": {},
    "ce": {},
    "dkd": {"warmup": 10, "warmup_unit": "steps"},
    "hidden": {"weight": 1.0},
    "attention_scores": {},
    "minilm": {},
    "minilmv2": {"relation_heads": 4},
}


def _losses(**terms: object) -> LossesConfig:
    return LossesConfig.model_validate(terms)


def _check_gradients(obj: DistillObjective, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    loss, terms = obj(student, x, y)
    assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in terms.values()), terms
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in obj.teacher.parameters())
    trainable = [p for p in obj.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    return terms


def test_bert_every_term(bert, tokens):
    teacher, student = bert(layers=4, hidden=64, heads=4), bert(layers=2, hidden=32, heads=4, seed=1)
    obj = DistillObjective(teacher, _losses(**ALL_TERMS), student=student, example_inputs=tokens)
    d = obj.describe()
    assert d["hidden_pairs"] == [[0, 0], [1, 2], [2, 4]]  # TinyBERT uniform map, embeddings 0 <-> 0
    assert d["attention_score_pairs"] == [[1, 2], [2, 4]]
    assert d["minilm_pair"] == [2, 4] and d["minilmv2_pair"] == [2, 4]
    # one Linear 32 -> 64 shared by all pairs (TinyBERT's fit_dense)
    assert list(obj.projections) == ["linear_32_64"]
    y = torch.randint(0, 10, (3,))
    terms = _check_gradients(obj, student, tokens, y)
    assert set(terms) == set(ALL_TERMS)
    assert obj.projections["linear_32_64"].weight.grad.abs().sum() > 0


def test_bert_cosine_and_equal_widths_need_no_projection(bert, tokens):
    teacher, student = bert(layers=2), bert(layers=1, seed=1)
    obj = DistillObjective(teacher, _losses(hidden={}, cosine={}), student=student, example_inputs=tokens)
    assert len(obj.projections) == 0 and obj.describe()["hidden_pairs"] == [[0, 0], [1, 2]]
    terms = _check_gradients(obj, student, tokens, torch.randint(0, 10, (3,)))
    assert terms["cosine"] >= 0


def test_padding_does_not_change_the_attention_terms(bert):
    # The same sequence with and without trailing padding gives the same MiniLM value.
    teacher, student = bert(layers=2, seed=0).eval(), bert(layers=1, seed=1).eval()
    losses = _losses(kd=None, ce=None, attention_scores={}, minilm={})
    real = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 0, 0]])
    obj = DistillObjective(teacher, losses, student=student, example_inputs=real)
    _, a = obj(student, real, torch.zeros(1, dtype=torch.long))
    _, b = obj(student, padded, torch.zeros(1, dtype=torch.long))
    assert b["minilm"] == pytest.approx(a["minilm"], rel=1e-4)
    # TinyBERT masks only the padded keys (its rows of padded queries still count), so no equality there
    assert b["attention_scores"] > 0


def test_timm_vit_every_term(vit):
    teacher, student = vit(depth=2), vit(depth=1, seed=1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    obj = DistillObjective(teacher, _losses(**ALL_TERMS, cosine={}), student=student, example_inputs=x)
    assert obj.describe()["hidden_pairs"] == [[0, 0], [1, 2]]
    terms = _check_gradients(obj, student, x, y)
    assert set(terms) == set(ALL_TERMS) | {"cosine"}


def test_resnet_half_width_gets_conv_regressors(resnet):
    teacher, student = resnet(), resnet(seed=1, half=True)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    obj = DistillObjective(teacher, _losses(hidden={}, dkd={"warmup": 0}), student=student, example_inputs=x)
    assert obj.describe()["hidden_pairs"] == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]
    # one 1x1 conv + BN + ReLU per pair (stem 32->64, stages 32->64 ... 256->512)
    convs = [m[0] for m in obj.projections.values()]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (32, 64, (1, 1)),
        (32, 64, (1, 1)),
        (64, 128, (1, 1)),
        (128, 256, (1, 1)),
        (256, 512, (1, 1)),
    ]
    student.train()
    _check_gradients(obj, student, x, y)


def test_resnet_glob_override_and_last_map(resnet):
    teacher, student = resnet(), resnet(seed=1)
    losses = _losses(hidden={"student_layers": "layer*", "teacher_layers": "layer[34]", "layer_map": "last"})
    x = torch.randn(2, 3, 16, 16)
    obj = DistillObjective(teacher, losses, student=student, example_inputs=x)
    d = obj.describe()
    assert d["hidden_pairs"] == [[4, 2]]
    assert d["teacher"]["hidden"] == ["layer3", "layer4"] and d["teacher"]["layout"] == "glob"


def test_tiny_vit_explicit_map_and_always_projection():
    teacher, student = tiny_vit(depth=4), tiny_vit(depth=2, seed=1)
    losses = _losses(hidden={"layer_map": [[1, 2], [2, 4]], "projection": "always"})
    x = torch.randn(4, 1, 8, 8)
    obj = DistillObjective(teacher, losses, student=student, example_inputs=x)
    assert obj.describe()["hidden_pairs"] == [[1, 2], [2, 4]] and list(obj.projections) == ["linear_32_32"]
    _check_gradients(obj, student, x, torch.randint(0, 10, (4,)))


def test_teacher_is_a_frozen_copy_and_moves_with_the_objective():
    teacher, student = tiny_vit(), tiny_vit(seed=1)
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    obj = kd_objective(teacher, LossesConfig())
    assert isinstance(obj, DistillObjective) and obj.teacher is not teacher
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    obj.train()
    assert not obj.teacher.training
    obj(student, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))[0].backward()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert [n for n, p in obj.named_parameters() if p.requires_grad] == []
    obj.to(torch.float64)
    assert next(obj.teacher.parameters()).dtype == torch.float64


def test_projection_parameters_exist_before_the_first_call():
    teacher, student = tiny_vit(dim=64), tiny_vit(dim=32, seed=1)
    obj = DistillObjective(
        teacher, _losses(hidden={}), student=student, example_inputs=torch.randn(2, 1, 8, 8)
    )
    names = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert names == ["projections.linear_32_64.weight", "projections.linear_32_64.bias"]


def test_default_losses_keep_the_kd_ce_objective():
    teacher, student = tiny_vit(), tiny_vit(seed=1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss, terms = kd_objective(teacher, LossesConfig())(student, x, y)
    assert set(terms) == {"kd", "ce"}
    assert loss.item() == pytest.approx(0.9 * terms["kd"] + 0.1 * terms["ce"], rel=1e-5)


def test_ce_only_does_not_run_the_teacher():
    calls = []
    teacher = tiny_vit()
    obj = kd_objective(teacher, _losses(kd=None, ce={"weight": 1.0}))
    obj.teacher.register_forward_hook(lambda *a: calls.append(1))
    obj(tiny_vit(seed=1), torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    assert calls == []


def test_dkd_warmup_follows_the_step():
    teacher, student = tiny_vit(), tiny_vit(seed=1)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    by_epoch = kd_objective(teacher, _losses(kd=None, ce=None, dkd={"warmup": 4}), steps_per_epoch=10)
    by_epoch.set_step(0)
    loss0, terms = by_epoch(student, x, y)
    assert loss0.item() == pytest.approx(0.25 * terms["dkd"], rel=1e-5)  # epoch 1 of 4
    by_epoch.set_step(25)  # epoch 3
    assert by_epoch.dkd_factor() == 0.75
    by_steps = kd_objective(teacher, _losses(kd=None, ce=None, dkd={"warmup": 2, "warmup_unit": "steps"}))
    student.train()
    factors = []
    for _ in range(3):
        factors.append(by_steps.dkd_factor())
        by_steps(student, x, y)  # counts its own training steps when nobody calls set_step
    assert factors == [0.5, 1.0, 1.0]


def test_dkd_in_epochs_needs_steps_per_epoch():
    with pytest.raises(ConfigError, match=r"^losses\.dkd\.warmup_unit: 'epochs' needs the steps per epoch"):
        kd_objective(tiny_vit(), _losses(dkd={}))


@pytest.mark.parametrize("term", FEATURE_TERMS)
def test_feature_terms_need_a_student(term):
    with pytest.raises(
        ConfigError, match=rf"^stages\[2\]\.prune\.losses\.{term}: this stage gives its loss no student"
    ):
        kd_objective(tiny_vit(), _losses(**{term: {}}), yaml_path="stages[2].prune.losses")


# --- bad input: ConfigError naming the YAML key and the fix ------------------------------------------


def _build(teacher: nn.Module, student: nn.Module, x: torch.Tensor, **terms: object) -> DistillObjective:
    return DistillObjective(teacher, _losses(**terms), student=student, example_inputs=x, yaml_path=PATH)


def test_glob_matching_nothing_lists_module_names(resnet):
    with pytest.raises(ConfigError) as e:
        _build(resnet(), resnet(), torch.randn(2, 3, 16, 16), hidden={"student_layers": "net.layer*"})
    msg = str(e.value)
    assert msg.startswith(
        f"{PATH}.hidden.student_layers: the student (ResNet): no module matches 'net.layer*'"
    )
    assert "layer1" in msg and "write a glob that matches" in msg


def test_layer_map_out_of_range():
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.hidden\.layer_map: pair\(s\) \[\[3, 1\]\] out of range: "
                       r"the student has hidden states 0\.\.2 \(0 = embedding output\), the teacher 0\.\.4"):  # fmt: skip
        _build(tiny_vit(depth=4), tiny_vit(depth=2), torch.randn(2, 1, 8, 8), hidden={"layer_map": [[3, 1]]})
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.attention_scores\.layer_map: pair\(s\) \[\[1, 0\]\]"):
        _build(tiny_vit(), tiny_vit(), torch.randn(2, 1, 8, 8), attention_scores={"layer_map": [[1, 0]]})


def test_minilm_with_unequal_heads_points_to_minilmv2(bert, tokens):
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.minilm: the student's last layer has 2 attention heads and "
                       r"the teacher's 4.*use losses\.minilmv2"):  # fmt: skip
        _build(bert(heads=4), bert(heads=2), tokens, minilm={})
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.attention_scores: .*equal head counts"):
        _build(bert(heads=4), bert(heads=2), tokens, attention_scores={})
    obj = _build(bert(heads=4), bert(heads=2), tokens, minilmv2={})  # relation heads lift the constraint
    assert obj.describe()["relation_heads"] == 4


def test_relation_heads_must_divide_both_widths(bert, tokens):
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.minilmv2\.relation_heads: 5 relation heads must divide "
                       r"both attention widths \(student 32, teacher 32\); choose one of"):  # fmt: skip
        _build(bert(), bert(), tokens, minilmv2={"relation_heads": 5})
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.minilmv2\.teacher_layer: layer 7 out of range"):
        _build(bert(), bert(), tokens, minilmv2={"teacher_layer": 7})


@pytest.mark.parametrize("term", ["attention_scores", "minilm", "minilmv2"])
def test_attention_terms_need_an_attention_layout(resnet, term):
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.{term}: the student \(ResNet, layout 'resnet'\) has no "
                       "attention layers"):  # fmt: skip
        _build(resnet(), resnet(), torch.randn(2, 3, 16, 16), **{term: {}})
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(
        ConfigError, match=rf"^{EPATH}\.{term}: the student \(Sequential\) matches no feature layout"
    ):
        _build(tiny_vit(), mlp, torch.randn(2, 1, 8, 8), **{term: {}})


def test_hidden_on_an_unknown_model_asks_for_a_glob():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.hidden: the student \(Sequential\) matches no feature layout.*"
                       rf"set {EPATH}\.hidden\.student_layers to a glob"):  # fmt: skip
        _build(tiny_vit(), mlp, torch.randn(2, 1, 8, 8), hidden={})
    # a glob makes any module a tap; a (B, D) feature still cannot pair with the teacher's (B, L, D) tokens
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.hidden: cannot pair student hidden state 1 \(2, 32\)"):
        _build(tiny_vit(), mlp, torch.randn(2, 1, 8, 8), hidden={"student_layers": "2", "layer_map": "last"})
    # between two such models it works, with a learned Linear for the different widths
    teacher_mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    obj = _build(
        teacher_mlp, mlp, torch.randn(2, 1, 8, 8), hidden={"student_layers": "2", "teacher_layers": "2"}
    )
    assert list(obj.projections) == ["linear_32_48"]


def test_cosine_needs_equal_widths(bert, tokens):
    with pytest.raises(ConfigError, match=rf"^{EPATH}\.cosine: the last hidden states differ in shape"):
        _build(bert(hidden=64), bert(hidden=32), tokens, cosine={})


def test_projection_none_refuses_different_widths():
    with pytest.raises(
        ConfigError, match=rf"^{EPATH}\.hidden\.projection: .*widths differ; set projection: auto"
    ):
        _build(tiny_vit(dim=64), tiny_vit(dim=32), torch.randn(2, 1, 8, 8), hidden={"projection": "none"})


def test_losses_config_dump_is_unchanged_for_existing_yamls():
    assert LossesConfig().model_dump(mode="json") == {
        "kd": {"temperature": 4.0, "weight": 0.9},
        "ce": {"weight": 0.1},
    }
    full = _losses(**{**ALL_TERMS, "cosine": {}, "hidden": {"layer_map": [[0, 0], [2, 4]]}})
    assert LossesConfig.model_validate(full.model_dump(mode="json")) == full
    with pytest.raises(ValueError, match="every term is disabled"):
        _losses(kd=None, ce=None)
