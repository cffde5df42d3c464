"""The export stage's INT4 formats, onnxslim simplification, external data, preprocess.json and MODEL_CARD.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import onnx
import pydantic
import pytest
import torch

import compress.stages.export as export_module
from compress.quant import QuantConfig, calibrate_, prepare_qat
from compress.stages.export import ExportStage, ExportStageConfig
from tests._helpers.models import Recorder, digits, stage_context, tiny_bert, tiny_vit

INT4 = ["onnx-fp32", "onnx-int4", "onnx-int4-matmulnbits"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return digits(tmp_path_factory.mktemp("export-int4"))


def _qat4(data: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    qat = prepare_qat(tiny_vit(), QuantConfig.model_validate({"weights": {"bits": 4}}))
    calibrate_(qat, lambda m: [m(x) for _, (x, _) in zip(range(2), data.batches("train", 64), strict=False)])
    return qat.eval()


def test_config():
    cfg = ExportStageConfig.model_validate(
        {"formats": INT4, "int4": {"block_size": 32, "keep_float": ["head"]}}
    )
    assert (cfg.int4.block_size, cfg.int4.keep_float) == (32, ["head"])
    assert ExportStageConfig().int4.block_size == 128
    tol = ExportStageConfig().tolerances.int4
    assert (tol.min_top1_agreement, tol.min_cosine, tol.max_abs_error) == (0.99, 0.9999, None)
    with pytest.raises(
        pydantic.ValidationError, match=r"int4\.block_size[\s\S]*got 48; expected a power of two"
    ):
        ExportStageConfig.model_validate({"int4": {"block_size": 48}})
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 16"):
        ExportStageConfig.model_validate({"int4": {"block_size": 8}})
    # INT4 needs no qat stage: a float model is rounded to nearest
    assert ExportStage.check_order(ExportStageConfig(formats=INT4), []) == []
    assert ExportStageConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_int4_from_a_float_model(data: Any, tmp_path: Path):
    rec = Recorder()
    ctx = stage_context(tmp_path, data, tiny_vit().eval(), kind="export", index=1, reporter=rec)
    res = ExportStage().run(ctx, ExportStageConfig(formats=INT4, int4={"block_size": 16}))
    arts = {a.name: a for a in res.artifacts}
    assert {n: a.path for n, a in arts.items()} == {
        "onnx-fp32": "artifacts/model.fp32.onnx",
        "onnx-int4": "artifacts/model.int4.onnx",
        "onnx-int4-matmulnbits": "artifacts/model.int4-matmulnbits.onnx",
    }
    n_val = data.split_size("val")
    for name in ("onnx-int4", "onnx-int4-matmulnbits"):
        meta = arts[name].meta
        assert arts[name].precision == "int4"
        assert meta["int4_layers"] == {"qat": 0, "rtn": 14} and meta["block_size"] == 16
        assert meta["parity"]["n"] == n_val and meta["parity"]["top1_agreement"] >= 0.99
        assert meta["parity"]["max_abs_error"] < 1e-3
        assert 0 <= meta["parity"]["accuracy"] <= 1
        assert meta["vs_float"]["n"] == n_val and meta["vs_float"]["max_abs_error"] > 0
        assert meta["external_data"] == []
    assert arts["onnx-int4"].meta["opset"] == 21 and arts["onnx-int4"].meta["int4"]["dq_int4"] == 14
    assert arts["onnx-int4-matmulnbits"].meta["opset"] == 17
    assert arts["onnx-int4-matmulnbits"].meta["int4"]["matmulnbits"] == 14
    assert (
        "ort_cpu_parity" in arts["onnx-int4"].meta
        and "ort_cpu_parity" not in arts["onnx-int4-matmulnbits"].meta
    )
    # 4.x on the weights (0.5 byte + a float32 scale per 16), less on a file this small: graph nodes weigh
    assert res.metrics["int4_size_ratio"] > 2
    json.dumps(res.metrics)
    pre = json.loads((tmp_path / "artifacts" / "preprocess.json").read_text())
    assert pre["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert pre["dynamic_axes"] == {"input": {"0": "batch"}, "logits": {"0": "batch"}}
    assert pre["normalisation"]["mean"] == 0.3
    assert pre["normalisation"]["std"] == 0.4
    assert pre["labels"] == [str(i) for i in range(10)]
    assert "tokenizer" not in pre
    assert pre["artifacts"]["onnx-int4"] == "model.int4.onnx"
    # what went in and what came out
    card = (tmp_path / "artifacts" / "MODEL_CARD.md").read_text()
    assert res.metrics["model_card"] == "artifacts/MODEL_CARD.md"
    for name in arts:
        assert f"| {name} | `{Path(arts[name].path).name}` |" in card
    assert "vs the float model: top-1 agreement" in card and "Labels**: 0, 1, 2" in card


def test_int4_from_a_4bit_qat_model_keeps_the_learned_weights(data: Any, tmp_path: Path):
    qat = _qat4(data)
    ctx = stage_context(tmp_path, data, qat, kind="export", index=2)
    res = ExportStage().run(
        ctx, ExportStageConfig(formats=["onnx-int4-matmulnbits"], int4={"block_size": 16})
    )
    (art,) = res.artifacts
    assert art.meta["int4_layers"] == {"qat": 14, "rtn": 0}
    assert art.meta["parity"]["max_abs_error"] < 1e-3


def test_parity_failure_names_the_int4_tolerance(data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from compress.errors import ExportError

    real = export_module.parity

    def worse(path, model, x, **kw):  # noqa: ANN001, ANN202
        p = real(path, model, x, **kw)
        return {**p, "cosine": 0.5} if "int4" in str(path) else p

    monkeypatch.setattr(export_module, "parity", worse)
    ctx = stage_context(tmp_path, data, tiny_vit().eval(), kind="export", index=1)
    with pytest.raises(ExportError, match=r"onnx-int4 \(artifacts/model.int4.onnx\)[\s\S]*tolerances\.int4"):
        ExportStage().run(ctx, ExportStageConfig(formats=["onnx-int4"], int4={"block_size": 16}))


def test_external_data_through_the_stage(data: Any, tmp_path: Path):
    ctx = stage_context(tmp_path, data, tiny_vit().eval(), kind="export", index=1)
    res = ExportStage().run(
        ctx,
        ExportStageConfig(formats=["onnx-int4-matmulnbits"], external_data=True, int4={"block_size": 16}),
    )
    art_dir = tmp_path / "artifacts"
    for a in res.artifacts:
        (data_file,) = a.meta["external_data"]
        assert (art_dir / data_file).is_file() and "/" not in data_file
        assert (
            a.meta["size_bytes"] == (tmp_path / a.path).stat().st_size + (art_dir / data_file).stat().st_size
        )
    pre = json.loads((art_dir / "preprocess.json").read_text())
    assert pre["external_data"] == {a.name: a.meta["external_data"] for a in res.artifacts}


@pytest.mark.skipif(
    importlib.util.find_spec("onnxslim") is None, reason="onnxslim not installed (compress[export])"
)
def test_simplify_keeps_parity_and_records_it(data: Any, tmp_path: Path):
    ctx = stage_context(tmp_path, data, tiny_vit().eval(), kind="export", index=1)
    res = ExportStage().run(
        ctx, ExportStageConfig(formats=["onnx-int4"], simplify=True, int4={"block_size": 16})
    )
    for a in res.artifacts:
        s = a.meta["simplify"]
        assert s["applied"] and s["nodes_after"] < s["nodes_before"]
        assert a.meta["parity"] == s["parity_after"]
        assert len(onnx.load(str(tmp_path / a.path)).graph.node) == s["nodes_after"]
    assert res.artifacts[0].meta["int4"]["dq_int4"] == 14  # the INT4 weights survived
    assert not list((tmp_path / "artifacts").glob(".*"))  # no temporary left


@pytest.mark.skipif(
    importlib.util.find_spec("onnxslim") is None, reason="onnxslim not installed (compress[export])"
)
def test_simplified_graph_missing_the_tolerance_is_not_kept(
    data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = export_module.parity

    def slim_is_worse(path, model, x, **kw):  # noqa: ANN001, ANN202
        p = real(path, model, x, **kw)
        return {**p, "top1_agreement": 0.5} if ".slim." in str(path) else p

    monkeypatch.setattr(export_module, "parity", slim_is_worse)
    rec = Recorder()
    ctx = stage_context(tmp_path, data, tiny_vit().eval(), kind="export", index=1, reporter=rec)
    res = ExportStage().run(ctx, ExportStageConfig(formats=["onnx-fp32"], simplify=True))
    s = res.artifacts[0].meta["simplify"]
    assert not s["applied"] and "misses the tolerance: top1_agreement 0.5 < 0.999" in s["reason"]
    assert len(onnx.load(str(tmp_path / res.artifacts[0].path)).graph.node) == s["nodes_before"]
    assert res.artifacts[0].meta["parity"] == s["parity_before"]
    assert any("kept unsimplified" in line for line in rec.lines)


def test_missing_onnxslim_is_a_dependency_problem(monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxslim" else real(name, *a)
    )
    (msg,) = ExportStage.missing_dependencies(ExportStageConfig(formats=["onnx-fp32"], simplify=True))
    assert "simplify: true needs onnxslim" in msg and "pip install 'compress[export]'" in msg
    assert ExportStage.missing_dependencies(ExportStageConfig(formats=["onnx-fp32"])) == []


def test_preprocess_json_for_token_inputs_copies_the_tokenizer(tmp_path: Path):
    import numpy as np

    from compress.data import TaskData

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"model": "tiny"}')
    (tok / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (tok / "weights.bin").write_bytes(b"not a tokenizer file")
    torch.manual_seed(0)
    ids = torch.randint(1, 100, (60, 12))
    pre = {"input": "token_ids", "shape": [12], "dtype": "int64", "max_length": 12, "pad_token_id": 0,
           "padding": "max_length", "tokenizer": str(tok), "classes": ["a", "b", "c", "d", "e"]}  # fmt: skip
    data = TaskData(name="text", inputs=ids, labels=torch.arange(60) % 5, num_classes=5, preprocess=pre,
                    splits={"train": np.arange(40), "val": np.arange(40, 50), "test": np.arange(50, 60)})  # fmt: skip
    model = tiny_bert(num_hidden_layers=1)
    ctx = stage_context(tmp_path / "run", data, model, kind="export", index=0)
    ExportStage().run(ctx, ExportStageConfig(formats=["onnx-fp32"]))
    art = tmp_path / "run" / "artifacts"
    got = json.loads((art / "preprocess.json").read_text())
    assert got["input"] == {
        "name": "input",
        "shape": ["batch", "sequence"],
        "dtype": "int64",
        "max_length": 12,
    }
    assert got["dynamic_axes"]["input"] == {"0": "batch", "1": "sequence"}
    assert got["labels"] == ["a", "b", "c", "d", "e"]
    assert got["tokenizer"]["files"] == ["tokenizer/tokenizer.json", "tokenizer/vocab.txt"]
    assert got["tokenizer"]["pad_token_id"] == 0
    assert (art / "tokenizer" / "tokenizer.json").read_text() == '{"model": "tiny"}'
    assert not (art / "tokenizer" / "weights.bin").exists()
    assert "normalisation" not in got


def test_model_card_headline_prefers_the_model_record():
    from compress.stages.export import _headline

    metrics = {"history": [], "steps": 400, "val_accuracy": 0.5, "flag": True,
               "model": {"val_accuracy": 0.98, "test_accuracy": 0.95, "params": 10, "macs": 20}}  # fmt: skip
    assert _headline(metrics) == {
        "val_accuracy": 0.98,
        "test_accuracy": 0.95,
        "params": 10,
        "macs": 20,
        "steps": 400,
    }
