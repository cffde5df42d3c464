"""``augment:``: KD on perturbed token ids (``compress.distill.augment``) alone, in ``fit``, in the stages."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
import torch
from torch import nn

from compress.data import SOURCES, DataEnv, TaskData, load_or_make_splits
from compress.data.text import TextFileDataConfig
from compress.distill import (
    AugmentedObjective,
    DistillObjective,
    LossesConfig,
    TokenAugmentConfig,
    TokenAugmenter,
    augmenter_for,
)
from compress.errors import ConfigError
from compress.stages.distill import DistillStage, DistillStageConfig
from compress.stages.prune import PruneStage, PruneStageConfig
from compress.train import TrainConfig, fit
from tests._helpers.models import digits, stage_context, tiny_bert

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
WORDS = [
    "a", "the", "red", "green", "blue", "cat", "dog", "car", "tree", "apple",
    "pear", "fast", "old", "small", "big", "whale", "bicycle", "runs", "sits",
]  # fmt: skip


def _augmenter(seed: int = 0, vocab: int = 1000, **cfg: float) -> TokenAugmenter:
    return TokenAugmenter(
        TokenAugmentConfig(**cfg), pad_id=PAD, mask_id=MASK, special_ids=SPECIAL, vocab_size=vocab, seed=seed
    )


def _batch(b: int = 64, length: int = 40, vocab: int = 1000, seed: int = 0) -> torch.Tensor:
    """``[CLS] words [SEP] [PAD]...`` rows of random lengths, a few [UNK]s among the words."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(len(SPECIAL), vocab, (b, length), generator=g)
    x[torch.rand(b, length, generator=g) < 0.05] = UNK
    ends = torch.randint(length // 2, length, (b,), generator=g)
    for i, end in enumerate(ends.tolist()):
        x[i, 0], x[i, end] = CLS, SEP
        x[i, end + 1 :] = PAD
    return x


def _tokenizer_folder(folder: Path, *, mask: bool = True) -> Path:
    """A real word-level fast tokenizer (``[CLS] words [SEP]``, 24 ids) saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + (["[MASK]"] if mask else [])
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names + WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    extra = {"mask_token": "[MASK]"} if mask else {}
    PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        **extra,
    ).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tokenizer_folder(tmp_path_factory.mktemp("tok"))


def _text_data(folder: Path, tokenizer: Path, n: int = 96) -> TaskData:
    """``n`` short sentences in 3 classes, tokenised by the ``text`` source to 12 ids, with splits."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (length,), generator=g).tolist()]
        lines.append(json.dumps({"text": " ".join(words), "label": ["x", "y", "z"][i % 3]}))
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
    cfg = TextFileDataConfig(path="d.jsonl", tokenizer=str(tokenizer), max_length=12)
    data = SOURCES.get("text")(cfg, DataEnv(base_dir=folder))
    load_or_make_splits(data, folder / "splits.json", val_fraction=0.2, test_fraction=0.2, seed=0)
    return data


# --- the perturbation ------------------------------------------------------------------------------


def test_special_and_pad_tokens_never_change_and_x_is_left_alone() -> None:
    x = _batch()
    before = x.clone()
    out = _augmenter(examples=1.0, mask=0.5, replace=0.5)(x)
    assert torch.equal(x, before)  # a new tensor; the input is not modified
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    special = torch.isin(x, torch.tensor(SPECIAL))
    assert torch.equal(out[special], x[special])
    changed = out != x
    assert changed[~special].float().mean() > 0.9  # mask + replace = 1: (nearly) every content token changes
    replaced = changed & (out != MASK)
    assert replaced.any()
    assert not torch.isin(out[replaced], torch.tensor(SPECIAL)).any()
    assert out.max() < 1000
    assert out.min() >= 0


@pytest.mark.parametrize(("mask", "replace"), [(0.15, 0.0), (0.1, 0.2), (0.0, 0.3)])
def test_observed_rates_match_the_config(mask: float, replace: float) -> None:
    vocab = 1000
    x = _batch(b=1000, length=50, vocab=vocab)
    aug = _augmenter(vocab=vocab, examples=1.0, mask=mask, replace=replace)
    out = aug(x)
    content = ~torch.isin(x, torch.tensor(SPECIAL))
    n = int(content.sum())
    masked = float((out[content] == MASK).float().mean())
    # a replacement may draw the token it replaces (1 in |pool|): it is then unchanged
    replaced = float(((out != x) & (out != MASK))[content].float().mean())
    want_replaced = replace * (1 - 1 / (vocab - len(SPECIAL)))
    for got, want in ((masked, mask), (replaced, want_replaced)):
        se = max((want * (1 - want) / n) ** 0.5, 1e-9)
        assert abs(got - want) < 4 * se, (got, want, se)


def test_examples_share_of_each_batch_is_perturbed() -> None:
    x = _batch(b=8, length=64)
    aug = _augmenter(examples=0.25, mask=0.9)  # a chosen row of ~30+ content tokens always changes
    for _ in range(5):
        rows = (aug(x) != x).any(dim=1)
        assert int(rows.sum()) == 2
    aug = _augmenter(examples=0.5, mask=0.9)  # 2.5 rows of 5: 2 or 3 per batch, 2.5 on average
    x = _batch(b=5, length=64)
    counts = [int((aug(x) != x).any(dim=1).sum()) for _ in range(400)]
    assert set(counts) == {2, 3}
    assert abs(sum(counts) / len(counts) - 2.5) < 0.1


def test_same_seed_same_perturbations_other_seed_others() -> None:
    x = _batch()
    a, b, c = _augmenter(seed=0), _augmenter(seed=0), _augmenter(seed=1)
    outs_a = [a(x) for _ in range(3)]
    outs_b = [b(x) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b, strict=True))
    assert not torch.equal(outs_a[0], outs_a[1])  # each call draws anew
    assert not torch.equal(outs_a[0], c(x))
    a.reseed(7)
    again = a(x)
    b.reseed(7)
    assert torch.equal(again, b(x))
    b.reseed(7, stream=1)
    assert not torch.equal(again, b(x))


def test_int32_ids_keep_their_dtype_and_float_inputs_are_refused() -> None:
    x = _batch().to(torch.int32)
    assert _augmenter()(x).dtype == torch.int32
    with pytest.raises(ValueError, match="integer token ids"):
        _augmenter()(torch.randn(2, 8))


def test_mask_needs_a_mask_id() -> None:
    with pytest.raises(ValueError, match="set mask: 0"):
        TokenAugmenter(TokenAugmentConfig(), pad_id=0, mask_id=None, special_ids=[0], vocab_size=10, seed=0)
    cfg = TokenAugmentConfig(mask=0, replace=0.5)
    aug = TokenAugmenter(cfg, pad_id=0, mask_id=None, special_ids=[0], vocab_size=10, seed=0)
    assert aug.describe()["replace_pool"] == 9


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mask": 0.0, "replace": 0.0}, "mask and augment.replace are both 0"),
        ({"mask": 0.6, "replace": 0.5}, r"mask \+ augment.replace = 0.6 \+ 0.5 = 1.1 > 1"),
        ({"examples": 0.0}, "greater than 0"),
        ({"examples": 1.5}, "less than or equal to 1"),
        ({"mask": 1.0}, "less than 1"),
        ({"mask": True}, "not the boolean"),
        ({"masking": 0.1}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        TokenAugmentConfig(**fields)


def test_config_defaults_and_descriptions() -> None:
    cfg = TokenAugmentConfig()
    assert (cfg.examples, cfg.mask, cfg.replace) == (0.5, 0.15, 0.0)
    assert all(f.description for f in TokenAugmentConfig.model_fields.values())
    assert TokenAugmentConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_configs_without_augment_dump_as_before() -> None:
    # The runner's stage cache key hashes model_dump(mode="json"): a config without augment keeps its key.
    assert "augment" not in DistillStageConfig().model_dump(mode="json")
    assert "augment" not in DistillStageConfig.model_validate({"augment": None}).model_dump(mode="json")
    assert "augment" not in PruneStageConfig().model_dump(mode="json")["recover"]
    on = DistillStageConfig.model_validate({"augment": {"mask": 0.1}})
    assert on.model_dump(mode="json")["augment"] == {"examples": 0.5, "mask": 0.1, "replace": 0.0}
    assert DistillStageConfig.model_validate(on.model_dump(mode="json")) == on
    pr = PruneStageConfig.model_validate({"recover": {"epochs": 1, "augment": {}}})
    assert PruneStageConfig.model_validate(pr.model_dump(mode="json")) == pr


# --- from the data's tokenizer ---------------------------------------------------------------------


def test_augmenter_reads_the_datas_tokenizer(tmp_path: Path, tokenizer: Path) -> None:
    data = _text_data(tmp_path, tokenizer)
    aug = augmenter_for(TokenAugmentConfig(replace=0.1), data, seed=0, yaml_path="stages[0].distill.augment")
    assert aug.mask_id == MASK
    assert aug.special_ids == SPECIAL
    assert aug.vocab_size == 5 + len(WORDS)
    out = aug(data.inputs)
    assert torch.equal(out[data.inputs == PAD], data.inputs[data.inputs == PAD])
    assert (out == MASK).any()


def test_non_token_data_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^stages\[1\]\.distill\.augment: augment applies to token-id \(text\) data only; .*"
        r"'digits' has inputs of kind 'image'; remove stages\[1\]\.distill\.augment",
    ):
        augmenter_for(TokenAugmentConfig(), digits(tmp_path), seed=0, yaml_path="stages[1].distill.augment")


def test_mask_without_a_mask_token_is_a_config_error(tmp_path: Path) -> None:
    tok = _tokenizer_folder(tmp_path / "tok", mask=False)
    data = _text_data(tmp_path / "d", tok)
    with pytest.raises(ConfigError, match=r"augment\.mask: 0\.15, but the tokenizer .* has no mask token; "
                       r"set stages\[0\]\.distill\.augment\.mask: 0 and use .*augment\.replace"):  # fmt: skip
        augmenter_for(TokenAugmentConfig(), data, seed=0, yaml_path="stages[0].distill.augment")
    aug = augmenter_for(TokenAugmentConfig(mask=0, replace=0.2), data, seed=0, yaml_path="x")
    assert aug.mask_id is None
    assert aug.describe()["replace_pool"] == len(WORDS)


# --- the objective wrapper -------------------------------------------------------------------------


class Spy(nn.Module):
    """A loss module that records the inputs it is given, with one trainable parameter and a step hook."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []
        self.steps: list[int] = []

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.seen.append(x)
        return self.scale * 0, {}

    def set_step(self, step: int) -> None:
        self.steps.append(step)

    def describe(self) -> dict[str, Any]:
        return {"terms": ["spy"]}


def test_wrapper_perturbs_only_while_training_with_grad() -> None:
    spy, model, x = Spy(), nn.Linear(1, 1), _batch(b=16)
    obj = AugmentedObjective(spy, _augmenter(examples=1.0, mask=0.5))
    model.eval()
    obj(model, x, None)
    model.train()
    with torch.no_grad():
        obj(model, x, None)
    assert all(torch.equal(s, x) for s in spy.seen)
    obj(model, x, None)
    assert not torch.equal(spy.seen[-1], x)
    assert obj.perturbed_batches == 1
    obj.set_step(3)
    assert spy.steps == [3]
    assert [n for n, _ in obj.named_parameters()] == ["objective.scale"]
    assert obj.describe()["terms"] == ["spy"]
    assert obj.describe()["augment"]["perturbed_batches"] == 1


def test_teacher_and_student_see_the_same_perturbed_batch(bert: Callable[..., nn.Module]) -> None:
    teacher, student, x = bert(layers=2, seed=0), bert(layers=1, seed=1), _batch(b=8, length=12, vocab=100)
    obj = AugmentedObjective(
        DistillObjective(teacher, LossesConfig(), student=student, example_inputs=x[:2]),
        _augmenter(vocab=100, examples=1.0, mask=0.3, replace=0.3),
    )
    seen: dict[str, torch.Tensor] = {}
    obj.objective.teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0]))
    student.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    student.train()
    obj(student, x, torch.zeros(8, dtype=torch.long))
    assert torch.equal(seen["teacher"], seen["student"])
    assert not torch.equal(seen["student"], x)


class _StopError(Exception):
    """Ends a training run early, as a kill would (the last epoch's checkpoint stays)."""


def test_fit_resumes_an_augmented_objective_as_an_uninterrupted_run(tmp_path: Path, tokenizer: Path) -> None:
    data = _text_data(tmp_path / "d", tokenizer)
    teacher, student0 = tiny_bert(num_labels=3), tiny_bert(seed=1, num_labels=3, hidden_size=16)
    train = TrainConfig(epochs=2, lr=1e-3, batch_size=16, device="cpu")
    aug_cfg = TokenAugmentConfig(examples=0.5, mask=0.15, replace=0.1)

    def run(ckpt: Path, stop_at: int | None = None) -> tuple[nn.Module, AugmentedObjective]:
        student = copy.deepcopy(student0)
        torch.manual_seed(5)  # the projection's initial weights
        obj = AugmentedObjective(
            DistillObjective(teacher, LossesConfig.model_validate({"hidden": {}}), student=student,
                             example_inputs=data.inputs[:2]),
            augmenter_for(aug_cfg, data, seed=3, yaml_path="augment"),
        )  # fmt: skip

        def before(step: int) -> None:
            if step == stop_at:
                raise _StopError
            obj.set_step(step)

        fit(student, obj, data, train, batch_size=16, seed=1, checkpoint=ckpt, before_step=before)
        return student, obj

    whole, _ = run(tmp_path / "a.ckpt")
    with pytest.raises(_StopError):
        run(tmp_path / "b.ckpt", stop_at=4)  # 4 steps an epoch: stops at the start of epoch 1's first step
    saved = torch.load(tmp_path / "b.ckpt", weights_only=True)
    # the projection (student width 16 -> teacher 32) is saved under the wrapper's name and loaded back
    assert saved["epoch"] == 0
    assert set(saved["loss"]) == {
        "objective.projections.linear_16_32.weight",
        "objective.projections.linear_16_32.bias",
    }
    resumed, obj = run(tmp_path / "b.ckpt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert obj.perturbed_batches == 4  # only epoch 1 ran after the resume


# --- stages ----------------------------------------------------------------------------------------


def _distill(tmp_path: Path, data: TaskData, augment: dict[str, float] | None) -> Any:
    teacher = tiny_bert(num_labels=3)
    raw: dict[str, Any] = {
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "student": {"keep_layers": [1]},
        "losses": {"hidden": {"weight": 1.0}},
    }
    if augment is not None:
        raw["augment"] = augment
    ctx = stage_context(tmp_path, data, teacher, kind="distill", index=0, teacher=teacher)
    return DistillStage().run(ctx, DistillStageConfig.model_validate(raw))


def test_distill_stage_with_augment_runs_and_records_it(tmp_path: Path, tokenizer: Path) -> None:
    data = _text_data(tmp_path / "d", tokenizer)
    res = _distill(tmp_path / "a", data, {"examples": 0.5, "mask": 0.15, "replace": 0.05})
    aug = res.metrics["augment"]
    assert {k: aug[k] for k in ("examples", "mask", "replace", "mask_token_id")} == {
        "examples": 0.5, "mask": 0.15, "replace": 0.05, "mask_token_id": MASK}  # fmt: skip
    assert aug["perturbed_batches"] == res.metrics["steps"] == 4
    assert aug["seed"] == 1
    json.dumps(res.metrics)
    plain = _distill(tmp_path / "b", data, None)
    assert "augment" not in plain.metrics
    # the same seeds and data: only the perturbed batches make the two students differ
    pairs = zip(res.model.state_dict().values(), plain.model.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_distill_stage_on_image_data_names_the_yaml_path(tmp_path: Path) -> None:
    from tests._helpers.models import tiny_vit

    teacher = tiny_vit()
    ctx = stage_context(tmp_path, digits(tmp_path), teacher, kind="distill", index=2, teacher=teacher)
    cfg = DistillStageConfig.model_validate({"student": {"keep_layers": [1]}, "augment": {}})
    with pytest.raises(ConfigError, match=r"^stages\[2\]\.distill\.augment: augment applies to token-id"):
        DistillStage().run(ctx, cfg)


def test_prune_recovery_with_augment(tmp_path: Path, tokenizer: Path) -> None:
    data = _text_data(tmp_path / "d", tokenizer)
    model = tiny_bert(num_labels=3)
    ctx = dataclasses.replace(
        stage_context(tmp_path, data, model, kind="prune", index=1, seed=0),
        pipeline=SimpleNamespace(  # type: ignore[arg-type]
            data=SimpleNamespace(batch_size=16, eval_batch_size=64), teacher=SimpleNamespace(config={})
        ),
    )
    cfg = PruneStageConfig.model_validate(
        {
            "target": {"macs": 0.3},
            "iterative_steps": 2,
            "recover": {"epochs": 1, "train": {"device": "cpu"}, "augment": {"mask": 0.2}},
        }
    )
    res = PruneStage().run(ctx, cfg)
    aug = res.metrics["recover_augment"]
    assert aug["mask"] == 0.2
    assert aug["perturbed_batches"] == 2 * 4
    assert all("recover_kd" in s for s in res.metrics["steps"])


def test_compress_validate_refuses_augment_on_image_data_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from compress.cli.main import app

    text = """\
name: aug-on-images
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
data: {source: digits}
stages:
  - finetune: {train: {epochs: 1}}
  - distill:
      student: {keep_layers: [1]}
      augment: {mask: 0.15}
  - prune:
      recover:
        epochs: 1
        augment: {mask: 0.15}
"""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 2, r.output
    assert (
        "p.yaml:8: stages[1].distill.augment: augment applies to token-id (text) data only; data source "
        "'digits' gives image inputs: remove augment" in r.stderr
    )
    assert "p.yaml:12: stages[2].prune.recover.augment: augment applies to token-id" in r.stderr
    assert "Traceback" not in r.output
    # without augment the same pipeline is valid: the check is augment's, not the stages'
    plain = text.replace("      augment: {mask: 0.15}\n", "").replace("        augment: {mask: 0.15}\n", "")
    f.write_text(plain)
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 0, r.output


def test_augment_data_problem_knows_text_images_and_unknown_sources() -> None:
    from compress.data._text import TextDataConfig
    from compress.data.digits import DigitsDataConfig
    from compress.data.factory import FactoryDataConfig
    from compress.distill import augment_data_problem

    assert TextDataConfig.input_kind == "token_ids"
    assert augment_data_problem(DigitsDataConfig()) is not None
    # a factory's inputs are known only once loaded: the stage checks them then
    assert augment_data_problem(FactoryDataConfig(factory="m:f")) is None
