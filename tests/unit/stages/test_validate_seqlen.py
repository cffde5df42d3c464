"""A target's ``sequence_length``: token inputs timed padded/truncated to it, images unaffected, reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compress.config.api import load_target
from compress.config.schema import TargetConfig
from compress.data.base import TaskData, load_or_make_splits
from compress.errors import BadInputError, ConfigError
from compress.export import export_onnx
from compress.models import build_model
from compress.report.html import render_html
from compress.report.markdown import render_markdown
from compress.runtime import Session, TensorSpec
from compress.stages import Artifact, StageContext
from compress.stages.validate import ValidateStage, ValidateStageConfig, _check_fixed_length
from compress.train import evaluate
from tests._helpers.models import Recorder, digits, stage_context, tiny_vit

pytest.importorskip("transformers")

PAD = 3  # not 0, so padding with a wrong id would show
LENGTH = 8  # tokens per example as tokenised
TINY_BERT = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
             "intermediate_size": 32, "vocab_size": 100, "max_position_embeddings": 32}  # fmt: skip


def _target(**kw: Any) -> TargetConfig:
    fields = {"name": "cpu-ort", "runtime": "onnxruntime", "artifact": "onnx-fp32", "threads": 1,
              "batch_sizes": [1, 4], "warmup": 1, "iterations": 3} | kw  # fmt: skip
    return TargetConfig(**fields)


def _token_data(root: Path) -> TaskData:
    """60 examples of LENGTH token ids: 2..LENGTH real ids in [5, 100), the rest PAD."""
    rng = np.random.default_rng(0)
    ids = np.full((60, LENGTH), PAD, dtype=np.int64)
    for i, n in enumerate(rng.integers(2, LENGTH + 1, size=60)):
        ids[i, :n] = rng.integers(5, 100, size=n)
    data = TaskData("tokens", torch.from_numpy(ids), torch.from_numpy(rng.integers(0, 3, size=60)), 3, {})
    load_or_make_splits(data, root / "splits.json", val_fraction=0.2, test_fraction=0.3, seed=0)
    return data


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny HF BERT teacher (pad id PAD) on token data, with its FP32 ONNX export as the artifact."""
    root = tmp_path_factory.mktemp("bert-run")
    torch.manual_seed(0)
    data = _token_data(root)
    teacher = build_model("hf", {"hf_config": TINY_BERT, "num_labels": 3, "pad_token_id": PAD}).eval()
    export_onnx(teacher, root / "artifacts" / "model.fp32.onnx", data.tensors("val")[0][:2])
    return {"root": root, "data": data, "teacher": teacher}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("image-run")
    data = digits(root)
    teacher = tiny_vit().eval()
    export_onnx(teacher, root / "artifacts" / "model.fp32.onnx", data.tensors("val")[0][:2])
    return {"root": root, "data": data, "teacher": teacher}


def _ctx(run: dict[str, Any], target: TargetConfig, stage: str) -> StageContext:
    root = run["root"]
    ctx = stage_context(
        root, run["data"], run["teacher"], kind="validate", index=3, reporter=Recorder(), seed=0
    )
    return dataclasses.replace(
        ctx,
        stage_dir=root / "stages" / stage,
        artifacts={"onnx-fp32": Artifact("onnx-fp32", "artifacts/model.fp32.onnx", "onnx", "fp32")},
        targets={target.name: target},
    )


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every input array any session is run on, in call order."""
    seen: list[np.ndarray] = []
    original = Session.run

    def run(self: Session, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.extend(np.array(v, copy=True) for v in inputs.values())
        return original(self, inputs)

    monkeypatch.setattr(Session, "run", run)
    return seen


def _validate(run: dict[str, Any], target: TargetConfig, stage: str, roofline: bool = False) -> dict[str, Any]:
    cfg = ValidateStageConfig(targets=[target.name], roofline=roofline)
    return ValidateStage().run(_ctx(run, target, stage), cfg).metrics["targets"][target.name]


def test_tokens_are_padded_with_the_pad_id_to_the_target_length(bert_run, fed) -> None:
    out = _validate(bert_run, _target(sequence_length=2 * LENGTH), "pad")
    assert out["sequence_length"] == 2 * LENGTH and "sequence_length_note" not in out
    test_rows = {tuple(r) for r in bert_run["data"].tensors("test")[0].numpy()}
    lengths = [a.shape[1] for a in fed]
    assert set(lengths) == {LENGTH, 2 * LENGTH}
    timed = [a for a in fed if a.shape[1] == 2 * LENGTH]
    # 2 models x (memory probe + warm-up + 3 timed calls, at 2 batch sizes) at least
    assert len(timed) >= 2 * (1 + 2 * (1 + 3))
    for a in timed:
        assert (a[:, LENGTH:] == PAD).all()  # padded with the teacher's pad id
        assert all(tuple(r) in test_rows for r in a[:, :LENGTH])  # real split rows in front
    # accuracy and agreement: on the split as tokenised, so the same as the torch teacher's
    acc = evaluate(bert_run["teacher"], bert_run["data"], "test")["accuracy"]
    for name, m in out["models"].items():
        assert "error" not in m, m
        assert m["accuracy"] == pytest.approx(acc, abs=1e-6), name
        assert m["agreement"] == 1.0
        assert list(m["latency"]) == ["1", "4"]


def test_tokens_are_truncated_to_a_shorter_target_length(bert_run, fed) -> None:
    out = _validate(bert_run, _target(sequence_length=LENGTH // 2), "truncate")
    assert out["sequence_length"] == LENGTH // 2
    test_prefixes = {tuple(r[: LENGTH // 2]) for r in bert_run["data"].tensors("test")[0].numpy()}
    timed = [a for a in fed if a.shape[1] != LENGTH]
    assert timed and {a.shape[1] for a in timed} == {LENGTH // 2}
    assert all(tuple(r) in test_prefixes for a in timed for r in a)
    acc = evaluate(bert_run["teacher"], bert_run["data"], "test")["accuracy"]
    assert out["models"]["onnx-fp32"]["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_no_sequence_length_times_at_the_data_length_and_macs_follow_the_timed_length(bert_run, fed) -> None:
    at_data = _validate(bert_run, _target(batch_sizes=[2]), "data-length", roofline=True)
    assert at_data["sequence_length"] == LENGTH
    assert {a.shape[1] for a in fed} == {LENGTH}
    doubled = _validate(bert_run, _target(batch_sizes=[2], sequence_length=2 * LENGTH), "macs", roofline=True)
    for name in ("teacher", "onnx-fp32"):
        macs = at_data["models"][name]["roofline"]["macs_per_example"]
        # per-token layers double with the length (the pooler and classifier do not)
        assert 1.9 * macs < doubled["models"][name]["roofline"]["macs_per_example"] < 4 * macs, name


def test_image_inputs_ignore_the_sequence_length_with_a_note(image_run, fed) -> None:
    out = _validate(image_run, _target(sequence_length=128, batch_sizes=[2]), "image")
    assert out["sequence_length"] is None
    assert "sequence_length 128 of target 'cpu-ort' not applied: the inputs are not token ids" in (
        out["sequence_length_note"]
    )
    shape = tuple(image_run["data"].input_shape)
    assert {a.shape[1:] for a in fed} == {shape}
    assert all("error" not in m for m in out["models"].values())
    md = render_markdown(_manifest(out))
    assert "Note: sequence_length 128 of target 'cpu-ort' not applied" in md
    assert "@2 |" in md and "@2x" not in md


def test_report_shows_the_timed_shape(bert_run, fed) -> None:
    out = _validate(bert_run, _target(sequence_length=2 * LENGTH), "report")
    md = render_markdown(_manifest(out))
    assert f"p50 / p95 / p99 ms @4x{2 * LENGTH} | throughput/s @4x{2 * LENGTH} |" in md
    page = render_html(_manifest(out))
    assert f"p50 / p95 / p99 ms @4x{2 * LENGTH}" in page


def _manifest(target_metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "seqlen",
        "verdict": "pass",
        "stages": [{"id": "03-validate", "kind": "validate", "status": "ran", "seconds": 1.0,
                    "metrics": {"split": "test", "targets": {"cpu-ort": target_metrics}}}],
    }  # fmt: skip


def test_a_fixed_sequence_axis_of_another_length_is_an_error_with_the_fix() -> None:
    class Fixed:
        source = "model.fp16.engine"
        inputs = (TensorSpec("input", ("batch", 64), "int64"),)

    _check_fixed_length(Fixed(), 64)  # type: ignore[arg-type]
    _check_fixed_length(Fixed(), None)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match=r"fixed length 64 .* times at sequence length 128; set the target's "):
        _check_fixed_length(Fixed(), 128)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -4])
def test_schema_rejects_a_sequence_length_below_one(tmp_path: Path, bad: int) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(f"name: t\nruntime: onnxruntime\nartifact: onnx-fp32\nsequence_length: {bad}\n")
    with pytest.raises(ConfigError, match=r"t\.yaml:4: sequence_length: got " + str(bad)):
        load_target(path)
    path.write_text("name: t\nruntime: onnxruntime\nartifact: onnx-fp32\nsequence_length: 1\n")
    assert load_target(path).sequence_length == 1


def test_tensorrt_teacher_engine_is_built_at_the_timed_length(bert_run, monkeypatch) -> None:
    import sys

    from compress.runtime.tensorrt import TrtSession
    from compress.stages.validate import _pad_token_id, _Split
    from tests._helpers.fake_tensorrt import make_fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(version="10.9.0"))
    x, y = bert_run["data"].tensors("test")
    split = _Split(x.numpy(), y.numpy(), seed=0).at_length(2 * LENGTH, _pad_token_id(bert_run["teacher"]))
    ctx = _ctx(bert_run, _target(), "trt")
    src, rel = ValidateStage()._teacher_source(ctx, TrtSession, {}, [1, 4], split)
    plan = json.loads(src.read_bytes())
    assert plan["profiles"] == [{"input": [[1, 2 * LENGTH], [4, 2 * LENGTH], [4, 2 * LENGTH]]}]
    assert rel == f"stages/trt/teacher-trt-seq{2 * LENGTH}/teacher.fp32.engine"


def test_pad_id_is_the_teachers_then_its_configs_then_zero(bert_run) -> None:
    from types import SimpleNamespace

    from compress.stages.validate import _pad_token_id

    assert _pad_token_id(bert_run["teacher"]) == PAD
    assert _pad_token_id(SimpleNamespace(config=SimpleNamespace(pad_token_id=7))) == 7
    assert _pad_token_id(tiny_vit()) == 0


def test_torch_compile_floor_counts_the_macs_its_rewrites_execute_and_no_embedding_tables(bert_run) -> None:
    """The roofline floor of a ``torch-compile`` target counts the model as that runtime runs it (the last
    layer on the first token only), not the model's full MAC count; its bytes leave embedding tables out."""
    from compress.models import save_model
    from compress.models.stats import count_macs, count_params, count_streamed_params
    from compress.runtime.torch_compile import TorchCompileSession

    teacher = bert_run["teacher"]
    save_model(teacher, bert_run["root"] / "artifacts" / "model.pt")
    target = _target(name="cpu-compile", runtime="torch-compile", artifact="torch-fp32", batch_sizes=[2],
                     iterations=2, precision="fp32")  # fmt: skip
    ctx = dataclasses.replace(
        _ctx(bert_run, target, "compile-floor"),
        artifacts={"torch-fp32": Artifact("torch-fp32", "artifacts/model.pt", "torch", "fp32")},
    )
    cfg = ValidateStageConfig(targets=[target.name], roofline=True)
    out = ValidateStage().run(ctx, cfg).metrics["targets"][target.name]
    example = bert_run["data"].tensors("test")[0][:1]
    full = count_macs(teacher, example)
    executed = count_macs(TorchCompileSession.executed_model(teacher), example)
    assert executed < full
    for name in ("teacher", "torch-fp32"):
        assert out["models"][name]["roofline"]["macs_per_example"] == executed, name
        # the bytes: every weight but the embedding tables, whose rows a pass reads only for its tokens
        assert out["models"][name]["roofline"]["bytes_moved"] == 4 * count_streamed_params(teacher), name
    assert count_streamed_params(teacher) < count_params(teacher)
