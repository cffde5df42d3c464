"""Tracking: MLflow (embedded SQLite store) and TensorBoard event files, read back; off by default; errors warn."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compress.config.schema import TrackingConfig
from compress.tracking import TRACKERS, NullTracker, open_tracker
from compress.tracking.base import flatten_numbers, flatten_params, history_series, metric_key

PARAMS = {"name": "t", "seed": 0, "stages": [{"distill": {"train": {"epochs": 3}}}], "gates": {"size": None}}
METRICS = {
    "model": {"val_accuracy": 0.9, "params": 100},
    "targets": {"cpu-ort": {"ran": True, "models": {"onnx-int8": {"latency": {"32": {"p95_ms": 1.5}}}}}},
    "history": [{"step": 10, "epoch": 0, "kd": 0.5, "phase": "qat"}, {"step": 20, "epoch": 1, "kd": 0.25}],
}
GATES = [
    {"name": "latency[cpu-ort]@32.p95_ms", "passed": True, "measured": 1.5, "budget": 2.0, "message": "ok"},
    {"name": "size[cpu-ort]", "passed": False, "measured": None, "budget": 1.0, "message": "missing"},
]


def test_flattening():
    assert dict(flatten_numbers(METRICS)) == {
        "model/val_accuracy": 0.9,
        "model/params": 100.0,
        "targets/cpu-ort/models/onnx-int8/latency/32/p95_ms": 1.5,
    }
    assert flatten_params(PARAMS) == {
        "name": "t", "seed": "0", "stages.0.distill.train.epochs": "3", "gates.size": "None",
    }  # fmt: skip
    assert list(history_series(METRICS["history"])) == [("kd", 10, 0.5), ("kd", 20, 0.25)]
    assert metric_key("gate", "size[cpu-ort]", "passed") == "gate/size_cpu-ort_/passed"


def test_off_by_default_and_config_shorthand():
    assert isinstance(open_tracker(None, Path("x"), run_name="x"), NullTracker)
    assert TrackingConfig.model_validate("tensorboard").backend == "tensorboard"
    assert set(TRACKERS.names()) == {"mlflow", "tensorboard"}
    with pytest.raises(ValueError, match="did you mean 'mlflow'"):
        TrackingConfig.model_validate({"backend": "mlflw"})


def _log_everything(tracker, tmp_path: Path) -> Path:
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    tracker.log_stage("04-qat", "ran", METRICS)
    tracker.log_gates(GATES, "fail", [report, tmp_path / "missing.html"])
    tracker.close()
    return report


def test_mlflow_local_store_read_back(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    tracker = open_tracker(TrackingConfig(backend="mlflow"), run_dir, run_name="t", params=PARAMS)
    _log_everything(tracker, tmp_path)
    assert (run_dir / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["stages.0.distill.train.epochs"] == "3"
    m = run.data.metrics
    assert m["04-qat/model/val_accuracy"] == 0.9
    assert m["04-qat/targets/cpu-ort/models/onnx-int8/latency/32/p95_ms"] == 1.5
    assert m["gate/latency_cpu-ort__32.p95_ms/passed"] == 1.0 and m["gate/size_cpu-ort_/passed"] == 0.0
    assert m["gate/latency_cpu-ort__32.p95_ms/measured"] == 1.5 and m["verdict/pass"] == 0.0
    hist = client.get_metric_history(tracker.run_id, "04-qat/history/kd")
    assert sorted((h.step, h.value) for h in hist) == [(10, 0.5), (20, 0.25)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["report.md"]


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    tracker = open_tracker(TrackingConfig(backend="tensorboard"), run_dir, run_name="t", params=PARAMS)
    _log_everything(tracker, tmp_path)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "04-qat/model/val_accuracy" in scalars and "gate/size_cpu-ort_/passed" in scalars
    assert [(e.step, e.value) for e in acc.Scalars("04-qat/history/kd")] == [(10, 0.5), (20, 0.25)]
    assert acc.Scalars("gate/size_cpu-ort_/passed")[0].value == 0.0
    assert "config" in "".join(acc.Tags().get("tensors", []))


def test_backend_failure_warns_once_and_the_run_goes_on(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = open_tracker(TrackingConfig(backend="tensorboard"), tmp_path, run_name="t")

    def boom(*a, **k):
        raise OSError("server gone")

    tracker._log_metrics_impl = boom
    with pytest.warns(UserWarning, match="tracking 'tensorboard' failed \\(OSError: server gone\\)"):
        tracker.log_stage("01-x", "ran", METRICS)
    tracker.log_stage("02-x", "ran", METRICS)  # silent after the first failure
    tracker.close()


@pytest.mark.slow
def test_runner_logs_stages_and_gates(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from compress.config import load_config
    from compress.stages.runner import run_pipeline

    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        name: tr
        teacher: {family: tiny-vit, config: {dim: 16, depth: 1, num_heads: 2, mlp_dim: 32}}
        data: {source: digits, batch_size: 256, subset: 300}
        stages:
          - finetune: {train: {epochs: 1}}
        tracking: tensorboard
    """))
    out = run_pipeline(load_config(p), run_dir=tmp_path / "run")
    assert out.exit_code == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "01-finetune/model/val_accuracy" in scalars and "verdict/pass" in scalars


def test_a_run_that_raises_is_marked_failed_in_mlflow(tmp_path, monkeypatch):
    """The runner closes the tracker with FAILED when a stage raises, so no MLflow run is left RUNNING."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    import compress.stages.finetune as finetune_module
    from compress.config import load_config
    from compress.stages.runner import run_pipeline

    def boom(*_a, **_k):
        raise RuntimeError("stage failed")

    monkeypatch.setattr(finetune_module.FinetuneStage, "run", boom)
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        name: trf
        teacher: {family: tiny-vit, config: {dim: 16, depth: 1, num_heads: 2, mlp_dim: 32}}
        data: {source: digits, batch_size: 256, subset: 300}
        stages:
          - finetune: {train: {epochs: 1}}
        tracking: mlflow
    """))
    with pytest.raises(Exception, match="stage failed"):
        run_pipeline(load_config(p), run_dir=tmp_path / "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FAILED"]
