"""``compress bench`` and ``compress targets`` through typer's CliRunner: output, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli.main import app
from compress.export import export_onnx
from compress.models import load_model, save_model
from compress.models.stats import count_macs
from tests._helpers.models import tiny_vit

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[3]

TARGET = """\
name: {name}
device: {device}
runtime: {runtime}
precision: fp32
artifact: onnx-fp32
threads: 1
batch_sizes: [1, 4]
warmup: 1
iterations: 5
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model = tiny_vit(depth=1, dim=16, num_heads=2, mlp_dim=32).eval()
    onnx_path = export_onnx(model, root / "m.onnx", model.example_inputs(2))
    save_model(model, root / "m.pt")
    deploy = root / "deploy"
    deploy.mkdir()
    for name, device, rt in (
        ("tiny-ort", "cpu", "onnxruntime"),
        ("tiny-torch", "cpu", "torch"),
        ("tiny-gpu", "cuda", "onnxruntime"),
    ):
        (deploy / f"{name}.yaml").write_text(TARGET.format(name=name, device=device, runtime=rt))
    macs = count_macs(model, model.example_inputs(1))
    return {"onnx": Path(onnx_path), "pt": root / "m.pt", "deploy": deploy, "macs": macs}


def test_targets_lists_shipped_targets_with_why_not():
    r = runner.invoke(app, ["targets", "--deploy-dir", str(ROOT / "deploy"), "--json"])
    assert r.exit_code == 0, r.output
    rows = {t["name"]: t for t in json.loads(r.stdout)["targets"]}
    assert {"cpu-ort", "h100-trt-int8", "h200-torch-compile-fp16"} <= set(rows)
    cpu = rows["cpu-ort"]
    assert (cpu["device"], cpu["runtime"], cpu["precision"], cpu["runs_here"]) == ("cpu", "onnxruntime", "int8", True)
    if not torch.cuda.is_available():
        trt = rows["h100-trt-int8"]
        assert trt["runs_here"] is False and "CUDA" in trt["why"]
        assert rows["h100-torch-fp16"]["runs_here"] is False and "no CUDA device" in rows["h100-torch-fp16"]["why"]


def test_targets_table_and_invalid_file(files, tmp_path):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "good.yaml").write_text(TARGET.format(name="good", device="cpu", runtime="onnxruntime"))
    (deploy / "bad.yaml").write_text(TARGET.format(name="bad", device="cpu", runtime="onnxruntim"))
    r = runner.invoke(app, ["targets", "--deploy-dir", str(deploy)])
    assert r.exit_code == 0, r.output
    assert "good" in r.stdout and "invalid" in r.stdout
    r = runner.invoke(app, ["targets", "--deploy-dir", str(deploy), "--json"])
    rows = {t["name"]: t for t in json.loads(r.stdout)["targets"]}
    assert rows["good"]["runs_here"] is True and rows["bad"]["valid"] is False
    assert "runtime: got 'onnxruntim' (did you mean 'onnxruntime'?)" in rows["bad"]["why"]


def test_targets_missing_deploy_dir_is_exit_2(tmp_path):
    r = runner.invoke(app, ["targets", "--deploy-dir", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "--deploy-dir" in r.stderr


def test_bench_onnx_json_with_macs(files):
    args = ["bench", str(files["onnx"]), "--target", "tiny-ort", "--deploy-dir", str(files["deploy"])]
    r = runner.invoke(app, [*args, "--batch", "2", "--batch", "4", "--json", "--macs", str(files["macs"])])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["format"], out["runtime"], out["device"]) == ("onnx", "onnxruntime", "cpu")
    assert list(out["latency"]) == ["2", "4"]
    assert all(s["iterations"] == 5 and s["clock"] == "perf_counter" for s in out["latency"].values())
    assert out["memory"]["gpu_peak_mb"] is None and out["memory"]["peak_rss_mb"] > 0
    roof = out["roofline"]["by_batch"]["4"]
    assert roof["flops"] == 2 * files["macs"] * 4 and roof["floor_ms"] > 0
    assert roof["p95_over_floor"] == pytest.approx(out["latency"]["4"]["p95_ms"] / roof["floor_ms"])
    # without --macs an ONNX file has no roofline, and says why
    r = runner.invoke(app, [*args, "--json", "--iterations", "2"])
    out = json.loads(r.stdout)
    assert "pass --macs" in out["roofline"]["unavailable"] and list(out["latency"]) == ["1", "4"]


def test_bench_torch_artifact_counts_macs_and_prints_table(files):
    args = ["bench", str(files["pt"]), "-t", "tiny-torch", "--deploy-dir", str(files["deploy"]), "-b", "4"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["format"] == "torch" and out["roofline"]["macs_per_example"] == files["macs"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "p95 ms" in r.stdout and "tiny-torch" in r.stdout and "perf_counter" in r.stdout


def test_bench_bad_input_is_exit_2(files, tmp_path):
    d = ["--deploy-dir", str(files["deploy"])]
    r = runner.invoke(app, ["bench", str(files["onnx"]), "--target", "tiny-ortt", *d])
    assert r.exit_code == 2 and "did you mean 'tiny-ort'" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["bench", str(files["onnx"]), "--target", "tiny-torch", *d])
    assert r.exit_code == 2 and "loads torch artifacts, not onnx" in r.stderr
    txt = tmp_path / "m.txt"
    txt.write_text("x")
    r = runner.invoke(app, ["bench", str(txt), "--target", "tiny-ort", *d])
    assert r.exit_code == 2 and "unknown artifact type '.txt'" in r.stderr
    r = runner.invoke(app, ["bench", str(tmp_path / "none.onnx"), "--target", "tiny-ort", *d])
    assert r.exit_code == 2
    r = runner.invoke(app, ["bench", str(files["onnx"]), "--target", "tiny-ort", "--batch", "0", *d])
    assert r.exit_code == 2 and "--batch" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_on_a_target_that_cannot_run_here_is_exit_2(files):
    r = runner.invoke(app, ["bench", str(files["onnx"]), "--target", "tiny-gpu", "--deploy-dir", str(files["deploy"])])
    assert r.exit_code == 2 and "cannot run on cuda here" in r.stderr


def test_bench_text_model_needs_seq_len_and_counts_macs_at_it(files, tmp_path):
    transformers = pytest.importorskip("transformers")
    from compress.models import build_model

    cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                  intermediate_size=32, vocab_size=100, max_position_embeddings=16)  # fmt: skip
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    save_model(build_model("hf", {"path": str(tmp_path / "bert"), "num_labels": 3}).eval(), tmp_path / "bert.pt")
    args = ["bench", str(tmp_path / "bert.pt"), "-t", "tiny-torch", "--deploy-dir", str(files["deploy"]), "-b", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "give --seq N" in r.stderr
    r = runner.invoke(app, [*args, "--seq-len", "8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["latency"]["2"]["iterations"] == 5 and out["sequence_length"] == 8
    # the roofline counts one example of token ids at the fed length
    model = load_model(tmp_path / "bert.pt")
    assert out["roofline"]["macs_per_example"] == count_macs(model, torch.randint(1, 100, (1, 8)))
    assert out["roofline"]["macs_per_example"] < count_macs(model, torch.randint(1, 100, (1, 12)))


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    """A tiny HF BERT as ONNX (dynamic batch and sequence axes) and a target timing 12 tokens."""
    pytest.importorskip("transformers")
    from compress.models import build_model

    root = tmp_path_factory.mktemp("bert-bench")
    cfg = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
           "intermediate_size": 32, "vocab_size": 100, "max_position_embeddings": 32}  # fmt: skip
    model = build_model("hf", {"hf_config": cfg, "num_labels": 3}).eval()
    path = export_onnx(model, root / "bert.onnx", torch.randint(1, 100, (2, 6)))
    (root / "deploy").mkdir()
    (root / "deploy" / "seq-ort.yaml").write_text(
        TARGET.format(name="seq-ort", device="cpu", runtime="onnxruntime") + "sequence_length: 12\n"
    )
    return {"onnx": Path(path), "deploy": root / "deploy"}


def test_bench_feeds_the_targets_sequence_length_and_seq_overrides_it(bert_onnx, monkeypatch):
    from compress.runtime import Session

    fed: list[tuple[int, ...]] = []
    original = Session.run
    monkeypatch.setattr(Session, "run", lambda self, x: fed.extend(a.shape for a in x.values()) or original(self, x))
    args = ["bench", str(bert_onnx["onnx"]), "-t", "seq-ort", "--deploy-dir", str(bert_onnx["deploy"]), "-b", "2"]
    r = runner.invoke(app, [*args, "--json", "--no-roofline"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["sequence_length"] == 12 and set(fed) == {(2, 12)}
    fed.clear()
    r = runner.invoke(app, [*args, "--seq", "5"])
    assert r.exit_code == 0, r.output
    assert set(fed) == {(2, 5)} and "5 tokens" in r.stdout
