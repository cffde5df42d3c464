"""Mistakes that used to surface only when their stage ran, now caught by `compress validate` (exit 2).

- ``qat: quant: overrides:`` patterns that match no quantizable module of the model entering qat
  (module names of meta-device models: the teacher, then the student and layer drops of earlier stages);
- ``prune: target: {latency: {target: NAME}}`` naming a deploy target the stage cannot time on;
- ``tracking: mlflow|tensorboard`` without the package installed.

Each message names file, line and YAML path, and the run-time checks stay as they were.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli.main import app
from compress.config import load_config
from compress.errors import MissingDependency

runner = CliRunner()

TEACHER = "teacher: {family: tiny-vit, config: {dim: 16, depth: 4, num_heads: 2, mlp_dim: 32}}\n"

QAT = """\
name: q
{teacher}student: {{keep_layers: [0, 2]}}
data: {{source: digits}}
stages:
  - finetune: {{train: {{epochs: 1}}}}
  - distill: {{train: {{epochs: 1}}}}
  - qat:
      quant:
        overrides:
          - {{pattern: head, weights: {{bits: 8}}}}
          - {{pattern: "{pattern}", quantize: false}}
"""


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _validate(path: Path) -> tuple[int, str, str]:
    r = runner.invoke(app, ["validate", str(path)])
    assert "Traceback" not in r.output
    return r.exit_code, r.stdout, r.stderr


# --------------------------------------------------------------------------- qat overrides (issue 6)


def test_override_matching_only_teacher_layers_is_an_error(tmp_path):
    # blocks.3 exists in the 4-block teacher but not in the 2-block student that enters qat
    p = _write(tmp_path, QAT.format(teacher=TEACHER, pattern="blocks.3.*"))
    code, _, err = _validate(p)
    assert code == 2, err
    assert (
        "p.yaml:12: stages[2].qat.quant.overrides[1].pattern: got 'blocks.3.*', which matches no quantizable"
        in err
    )
    assert "student keeps layers [0, 2]" in err
    assert "blocks.*.mlp.fc1" in err
    assert "layer stack 'blocks': 2 layer(s)" in err
    assert "overrides[0]" not in err  # `head` exists: only the bad pattern is reported


def test_override_matching_the_student_passes(tmp_path):
    p = _write(tmp_path, QAT.format(teacher=TEACHER, pattern="blocks.1.*"))
    code, out, err = _validate(p)
    assert code == 0, err
    assert "ok: q: finetune -> distill -> qat" in out


def test_misspelt_name_gets_did_you_mean_and_regex_gets_a_hint(tmp_path):
    code, _, err = _validate(_write(tmp_path, QAT.format(teacher=TEACHER, pattern="haed")))
    assert code == 2
    assert "got 'haed'" in err
    assert "(did you mean 'head'?)" in err
    code, _, err = _validate(_write(tmp_path, QAT.format(teacher=TEACHER, pattern=r"blocks\\.0\\..*")))
    assert code == 2
    assert "patterns are fnmatch globs (* ? [..]), not regular expressions" in err


def test_layer_drop_of_an_earlier_prune_stage_is_followed(tmp_path):
    text = QAT.format(teacher=TEACHER, pattern="blocks.{n}.*").replace(
        "  - qat:", "  - prune: {target: {macs: 0.2}, layers: {drop: 1}}\n  - qat:"
    )
    code, _, err = _validate(
        _write(tmp_path, text.replace("{n}", "1"))
    )  # 2 layers - 1 dropped: blocks.0 only
    assert code == 2, err
    assert "stages[3].qat.quant.overrides[1].pattern: got 'blocks.1.*'" in err
    assert "stages[2].prune.layers drops 1 of 2 layers" in err
    code, _, err = _validate(_write(tmp_path, text.replace("{n}", "0")))
    assert code == 0, err


def test_names_follow_the_quant_config(tmp_path):
    # the attention matmuls are quantizable modules only while quantize_attention_matmuls is on
    text = QAT.format(teacher=TEACHER, pattern="blocks.*.attn.qk")
    assert _validate(_write(tmp_path, text))[0] == 0
    off = text.replace("      quant:\n", "      quant:\n        quantize_attention_matmuls: false\n")
    code, _, err = _validate(_write(tmp_path, off))
    assert code == 2
    assert "got 'blocks.*.attn.qk'" in err


def test_compress_model_file_teacher_carries_its_architecture(tmp_path):
    from compress.models import build_model
    from compress.models.registry import save_model

    save_model(
        build_model("tiny-vit", {"dim": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32}), tmp_path / "t.pt"
    )
    # teacher.config builds the default 4-block tiny-vit; the file holds 2 blocks, and that is what runs
    text = (
        "name: q\nteacher: {family: tiny-vit, checkpoint: t.pt}\nstages:\n"
        "  - qat:\n      quant:\n        overrides: [{pattern: 'blocks.3.*', quantize: false}]\n"
    )
    code, _, err = _validate(_write(tmp_path, text))
    assert code == 2, err
    assert "p.yaml:6: stages[0].qat.quant.overrides[0].pattern: got 'blocks.3.*'" in err
    assert "the architecture stored in teacher.checkpoint" in err
    code, _, err = _validate(_write(tmp_path, text.replace("blocks.3.*", "blocks.1.*")))
    assert code == 0, err


@pytest.mark.parametrize(
    "pattern", ["head", "blocks.1.*", "blocks.2.*", "blocks.*.attn.[qk]", "patch_embed", "haed"]
)
def test_validate_agrees_with_prepare_qat_on_the_real_student(tmp_path, pattern):
    """The validate-time verdict equals the run-time one (prepare_qat on the real, weighted student)."""
    from compress.config.schema import StudentConfig
    from compress.distill.student import build_student
    from compress.models import build_model
    from compress.quant import QuantConfig, prepare_qat

    torch.manual_seed(0)
    teacher = build_model("tiny-vit", {"dim": 16, "depth": 4, "num_heads": 2, "mlp_dim": 32})
    student = build_student(teacher, StudentConfig(keep_layers=[0, 2]))
    cfg = QuantConfig.model_validate({"overrides": [{"pattern": pattern, "quantize": False}]})
    try:
        prepare_qat(student, cfg)
        runtime_error = ""
    except ValueError as e:
        runtime_error = str(e)
    runtime_ok = not runtime_error
    assert runtime_ok or "match no quantizable module" in runtime_error
    code, _, err = _validate(_write(tmp_path, QAT.format(teacher=TEACHER, pattern=pattern)))
    assert (code == 0) == runtime_ok, err


# --------------------------------------------------------------------------- prune latency target (issue 5)

PRUNE = """\
name: p
{teacher}data: {{source: digits}}
stages:
  - finetune: {{train: {{epochs: 1}}}}
  - prune:
      target: {{latency: {{target: {target}, batch: {batch}, p95_ms: 1.0}}}}
"""


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A deploy folder of our own next to the pipeline: an ONNX Runtime CPU target and a TensorRT one."""
    d = tmp_path / "deploy"
    d.mkdir()
    (d / "cpu-ort-fp32.yaml").write_text(
        "name: cpu-ort-fp32\nruntime: onnxruntime\nartifact: onnx-fp32\ndevice: cpu\nbatch_sizes: [1, 32]\n"
    )
    (d / "gpu-trt.yaml").write_text(
        "name: gpu-trt\nruntime: tensorrt\nartifact: tensorrt-fp16\ndevice: cuda\nprecision: fp16\n"
    )
    return d


def test_unknown_prune_latency_target_is_an_error_with_did_you_mean(tmp_path, deploy):
    p = _write(tmp_path, PRUNE.format(teacher=TEACHER, target="cpu-ort-fp23", batch=32))
    code, _, err = _validate(p)
    assert code == 2, err
    assert (
        "p.yaml:7: stages[1].prune.target.latency.target: unknown deploy target 'cpu-ort-fp23' "
        "(did you mean 'cpu-ort-fp32'?)"
    ) in err
    assert f"targets in {deploy}: cpu-ort-fp32, gpu-trt" in err


def test_prune_latency_target_that_cannot_time_a_model_is_an_error(tmp_path, deploy):
    del deploy
    code, _, err = _validate(_write(tmp_path, PRUNE.format(teacher=TEACHER, target="gpu-trt", batch=1)))
    assert code == 2, err
    assert "p.yaml:7: stages[1].prune.target.latency.target: target 'gpu-trt' uses runtime 'tensorrt'" in err
    assert "torch or onnxruntime runtime" in err


def test_prune_latency_target_that_cannot_run_here_is_an_error(tmp_path, deploy, monkeypatch):
    del deploy
    from compress.runtime import RUNTIMES

    ort = RUNTIMES.get("onnxruntime")
    monkeypatch.setattr(
        ort, "can_run_here", classmethod(lambda cls, device="cpu": (False, "no provider (test)"))
    )
    code, _, err = _validate(_write(tmp_path, PRUNE.format(teacher=TEACHER, target="cpu-ort-fp32", batch=32)))
    assert code == 2, err
    assert "stages[1].prune.target.latency.target: target 'cpu-ort-fp32' cannot run on this machine" in err
    assert "no provider (test)" in err


def test_prune_latency_target_loads_and_batch_is_free(tmp_path, deploy):
    # as at run time, the budget's batch is timed as given: it need not be among batch_sizes [1, 32]
    p = _write(tmp_path, PRUNE.format(teacher=TEACHER, target="cpu-ort-fp32", batch=8))
    loaded = load_config(p)
    assert loaded.targets["cpu-ort-fp32"].runtime == "onnxruntime"  # the stage times on this file
    assert loaded.deploy_dir == deploy
    assert _validate(p)[0] == 0


def test_broken_prune_latency_target_file_is_reported(tmp_path, deploy):
    (deploy / "cpu-ort-fp32.yaml").write_text(
        "name: cpu-ort-fp32\nruntime: onnxruntim\nartifact: onnx-fp32\n"
    )
    code, _, err = _validate(_write(tmp_path, PRUNE.format(teacher=TEACHER, target="cpu-ort-fp32", batch=1)))
    assert code == 2
    assert "cpu-ort-fp32.yaml:2: runtime: got 'onnxruntim' (did you mean 'onnxruntime'?)" in err
    # named by a validate stage too, and by a second prune stage: still reported once
    twice = PRUNE.format(teacher=TEACHER, target="cpu-ort-fp32", batch=1) + (
        "  - prune:\n      target: {latency: {target: cpu-ort-fp32, batch: 1, p95_ms: 1.0}}\n"
        "  - export: {formats: [onnx-fp32]}\n  - validate: {targets: [cpu-ort-fp32]}\n"
    )
    code, _, err = _validate(_write(tmp_path, twice))
    assert code == 2
    assert err.count("runtime: got 'onnxruntim'") == 1


# --------------------------------------------------------------------------- tracking (issue 8)

TRACK = """\
name: t
tracking: {tracking}
{teacher}stages:
  - finetune: {{train: {{epochs: 1}}}}
"""


@pytest.mark.parametrize(
    ("tracking", "hidden", "message"),
    [
        (
            "mlflow",
            "mlflow",
            "p.yaml:2: tracking: backend 'mlflow' needs MLflow: pip install 'compress[tracking]'",
        ),
        (
            "{backend: tensorboard}",
            "tensorboard",
            "p.yaml:2: tracking: backend 'tensorboard' needs the tensorboard package: "
            "pip install 'compress[tracking]'",
        ),
        (
            "mlflow",
            "sqlalchemy",
            "p.yaml:2: tracking: the embedded MLflow store (SQLite) needs sqlalchemy and alembic: "
            "pip install 'compress[tracking]'",
        ),
    ],
)
def test_tracking_backend_without_its_package_is_an_error(tmp_path, monkeypatch, tracking, hidden, message):
    monkeypatch.setitem(sys.modules, hidden, None)  # importlib.util.find_spec() now says: not installed
    p = _write(tmp_path, TRACK.format(teacher=TEACHER, tracking=tracking))
    code, _, err = _validate(p)
    assert code == 2, err
    assert message in err


def test_tracking_server_uri_needs_no_sqlite_packages(tmp_path, monkeypatch):
    if importlib.util.find_spec("mlflow") is None:  # not importorskip: importing mlflow takes seconds
        pytest.skip("mlflow is not installed")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    p = _write(
        tmp_path, TRACK.format(teacher=TEACHER, tracking="{backend: mlflow, uri: 'http://127.0.0.1:1'}")
    )
    assert _validate(p)[0] == 0


def test_run_time_tracking_check_is_unchanged(tmp_path, monkeypatch):
    from compress.config.schema import TrackingConfig
    from compress.tracking import open_tracker

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        MissingDependency, match=re.escape("tracking: backend 'mlflow' needs MLflow: pip install")
    ):
        open_tracker(TrackingConfig(backend="mlflow"), tmp_path, run_name="t")
    assert not (tmp_path / "mlflow").exists()


# --------------------------------------------------------------------------- all at once


def test_all_three_reported_at_once_by_run_too(tmp_path, deploy, monkeypatch):
    del deploy
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    text = (
        QAT.format(teacher=TEACHER, pattern="blocks.3.*")
        .replace("name: q\n", "name: q\ntracking: tensorboard\n")
        .replace(
            "  - qat:",
            "  - prune: {target: {latency: {target: cpu-ort-fp3, batch: 1, p95_ms: 1.0}}}\n  - qat:",
        )
    )
    p = _write(tmp_path, text)
    r = runner.invoke(app, ["run", str(p), "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "error: 3 problems:" in r.stderr
    assert "p.yaml:2: tracking:" in r.stderr
    assert "stages[2].prune.target.latency.target: unknown deploy target 'cpu-ort-fp3'" in r.stderr
    assert "stages[3].qat.quant.overrides[1].pattern: got 'blocks.3.*'" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing ran, nothing written
    assert "Traceback" not in r.output
