"""The validate stage on a tiny teacher and its FP32 ONNX copy: layout, exact accuracy, fail-closed cases."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
import torch

from compress.config.schema import TargetConfig
from compress.errors import ConfigError
from compress.export import export_onnx
from compress.models import save_model
from compress.stages import STAGES, Artifact, StageContext
from compress.stages.validate import ValidateStage, ValidateStageConfig
from compress.train import evaluate
from tests._helpers.models import Recorder, digits, tiny_vit

STATS_KEYS = {
    "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
    "throughput_per_s", "iterations", "repeats", "p50_spread_ms", "clock",
}  # fmt: skip


def _target(name: str = "cpu-ort", **kw: Any) -> TargetConfig:
    fields = {"runtime": "onnxruntime", "artifact": "onnx-fp32", "threads": 2, "batch_sizes": [1, 8],
              "warmup": 1, "iterations": 3} | kw  # fmt: skip
    return TargetConfig(name=name, **fields)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run directory with data, a teacher and its FP32 ONNX export as artifact 'onnx-fp32'."""
    root = tmp_path_factory.mktemp("run")
    data = digits(root)
    teacher = tiny_vit().eval()
    export_onnx(teacher, root / "artifacts" / "model.fp32.onnx", data.tensors("val")[0][:2])
    return {"root": root, "data": data, "teacher": teacher}


def _ctx(run: dict[str, Any], targets: dict[str, TargetConfig], artifacts: list[Artifact] | None = None,
         stage: str = "03-validate") -> StageContext:  # fmt: skip
    root = run["root"]
    if artifacts is None:
        artifacts = [Artifact("onnx-fp32", "artifacts/model.fp32.onnx", "onnx", "fp32")]
    return StageContext(
        run_dir=root,
        stage_dir=root / "stages" / stage,
        artifacts_dir=root / "artifacts",
        index=3,
        yaml_path="stages[3].validate",
        pipeline=None,  # type: ignore[arg-type]  (validate does not read the pipeline config)
        data=run["data"],
        teacher=run["teacher"],
        model=run["teacher"],
        artifacts={a.name: a for a in artifacts},
        history={},
        targets=targets,
        seed=0,
        reporter=Recorder(),
    )


def test_metrics_layout_accuracy_and_agreement(run: dict[str, Any]) -> None:
    ctx = _ctx(run, {"cpu-ort": _target()})
    metrics = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort"])).metrics
    json.dumps(metrics)  # JSON-able as recorded in metrics.json
    assert metrics["split"] == "test"
    t = metrics["targets"]["cpu-ort"]
    assert {k: t[k] for k in ("ran", "reason", "runtime", "device", "threads", "release_artifact")} == {
        "ran": True, "reason": None, "runtime": "onnxruntime", "device": "cpu", "threads": 2,
        "release_artifact": "onnx-fp32",
    }  # fmt: skip
    assert "release_missing" not in t
    assert list(t["models"]) == ["teacher", "onnx-fp32"]
    torch_acc = evaluate(run["teacher"], run["data"], "test")["accuracy"]
    for name, m in t["models"].items():
        assert m["accuracy"] == pytest.approx(torch_acc, abs=1e-6), name
        assert m["agreement"] == 1.0, name
        assert set(m["memory"]) == {"rss_delta_mb", "peak_rss_mb", "gpu_peak_mb", "gpu_method"}
        assert list(m["latency"]) == ["1", "8"]
        for stats in m["latency"].values():
            assert set(stats) == STATS_KEYS
            assert stats["iterations"] == 3
            assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"] <= stats["max_ms"]
            assert stats["clock"] == "perf_counter"
        assert m["memory"]["gpu_peak_mb"] is None and m["memory"]["gpu_method"].startswith("not applicable")
        roof = m["roofline"]
        assert list(roof["by_batch"]) == ["1", "8"] and roof["gemm_precision"] == "fp32"
        assert roof["by_batch"]["8"]["flops"] == 2 * roof["macs_per_example"] * 8 > 0
        assert roof["by_batch"]["8"]["p95_over_floor"] == pytest.approx(
            m["latency"]["8"]["p95_ms"] / roof["by_batch"]["8"]["floor_ms"]
        )
    teacher_file = ctx.stage_dir / "teacher.fp32.onnx"
    assert t["models"]["teacher"]["path"] == "stages/03-validate/teacher.fp32.onnx"
    assert t["models"]["teacher"]["size_mb"] == teacher_file.stat().st_size / 1e6
    art_file = run["root"] / "artifacts" / "model.fp32.onnx"
    assert t["models"]["onnx-fp32"]["size_mb"] == art_file.stat().st_size / 1e6
    lines = ctx.reporter.lines  # type: ignore[attr-defined]
    assert len(lines) == 2
    assert all("accuracy" in ln and "p95@8" in ln for ln in lines)


def test_stage_overrides_target_timing(run: dict[str, Any]) -> None:
    ctx = _ctx(run, {"cpu-ort": _target()})
    cfg = ValidateStageConfig(targets=["cpu-ort"], split="val", batch_sizes=[2], iterations=2, warmup=0)
    metrics = ValidateStage().run(ctx, cfg).metrics
    models = metrics["targets"]["cpu-ort"]["models"]
    assert metrics["split"] == "val"
    assert models["onnx-fp32"]["accuracy"] == pytest.approx(
        evaluate(run["teacher"], run["data"], "val")["accuracy"], abs=1e-6
    )
    assert {b: s["iterations"] for b, s in models["teacher"]["latency"].items()} == {"2": 2}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_target_that_cannot_run_here_is_recorded(run: dict[str, Any], runtime: str) -> None:
    ctx = _ctx(run, {"gpu": _target("gpu", device="cuda", runtime=runtime)}, stage=f"06-validate-{runtime}")
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["gpu"])).metrics["targets"]["gpu"]
    assert t["ran"] is False
    assert "CUDA" in t["reason"]
    assert t["models"] == {}
    assert (t["runtime"], t["device"]) == (runtime, "cuda")
    assert not (ctx.stage_dir / "teacher.fp32.onnx").exists()  # nothing measured, nothing exported
    assert ctx.reporter.lines == [f"  validate gpu: not run here: {t['reason']}"]  # type: ignore[attr-defined]


def test_missing_release_artifact_is_recorded(run: dict[str, Any]) -> None:
    ctx = _ctx(run, {"cpu-ort": _target(artifact="onnx-int8-u8")})
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort"])).metrics["targets"]["cpu-ort"]
    assert t["ran"] is True
    assert t["release_missing"] == (
        "artifact 'onnx-int8-u8' of target 'cpu-ort' was not produced by any stage (produced: onnx-fp32); "
        "add it to the export stage"
    )
    assert list(t["models"]) == ["teacher", "onnx-fp32"]  # the rest is still measured


def test_torch_runtime_measures_torch_artifacts_only(run: dict[str, Any]) -> None:
    save_model(run["teacher"], run["root"] / "artifacts" / "model.pt")
    arts = [
        Artifact("onnx-fp32", "artifacts/model.fp32.onnx", "onnx", "fp32"),
        Artifact("torch-fp32", "artifacts/model.pt", "torch", "fp32"),
    ]
    ctx = _ctx(
        run, {"cpu-torch": _target("cpu-torch", runtime="torch", threads=1)}, arts, stage="04-validate"
    )
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-torch"])).metrics["targets"]["cpu-torch"]
    assert list(t["models"]) == ["teacher", "torch-fp32"]
    assert t["models"]["torch-fp32"]["agreement"] == 1.0
    assert t["models"]["teacher"]["path"] is None
    assert "runtime 'torch' does not load" in t["release_missing"]
    assert not (ctx.stage_dir / "teacher.fp32.onnx").exists()


def test_broken_artifact_is_recorded_and_others_measured(run: dict[str, Any]) -> None:
    bad = run["root"] / "artifacts" / "broken.onnx"
    bad.write_bytes(b"\x00not onnx")
    arts = [
        Artifact("broken", "artifacts/broken.onnx", "onnx", "int8"),
        Artifact("onnx-fp32", "artifacts/model.fp32.onnx", "onnx", "fp32"),
    ]
    ctx = _ctx(run, {"cpu-ort": _target()}, arts)
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort"])).metrics["targets"]["cpu-ort"]
    assert set(t["models"]["broken"]) == {"error"}
    assert "broken.onnx" in t["models"]["broken"]["error"]
    assert t["models"]["onnx-fp32"]["agreement"] == 1.0


def test_unknown_target_is_a_config_error_before_any_work(run: dict[str, Any]) -> None:
    ctx = _ctx(run, {"cpu-ort": _target()}, stage="09-validate")
    with pytest.raises(ConfigError, match=r"stages\[3\]\.validate\.targets: unknown deploy target 'cpu-or' "
                                          r"\(did you mean 'cpu-ort'\?\)"):  # fmt: skip
        ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort", "cpu-or"]))
    assert not ctx.stage_dir.exists()


def test_stage_declaration_and_config() -> None:
    cls = STAGES.get("validate")
    assert cls is ValidateStage
    assert (cls.requires, cls.max_count, cls.config_class) == (frozenset({"export"}), 1, ValidateStageConfig)
    cfg = ValidateStageConfig(targets=["cpu-ort"])
    assert (cfg.split, cfg.batch_sizes, cfg.iterations, cfg.warmup) == ("test", None, None, None)
    assert ValidateStageConfig.model_validate(cfg.model_dump()) == cfg
    for bad, match in [
        ({"targets": []}, "at least 1 item"),
        ({"targets": ["a", "a"]}, r"listed more than once: \['a'\]"),
        ({"targets": ["a"], "split": "train"}, "'test' or 'val'"),
        ({"targets": ["a"], "batch_sizes": [0]}, "batch sizes must be >= 1"),
        ({"targets": ["a"], "iterations": 0}, "greater than or equal to 1"),
        ({"targets": ["a"], "itertions": 5}, "Extra inputs are not permitted"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=match):
            ValidateStageConfig(**bad)


def test_teacher_export_failure_is_recorded(run: dict[str, Any]) -> None:
    class NotExportable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("this teacher cannot be traced")

    ctx = _ctx(run, {"cpu-ort": _target()}, stage="05-validate")
    ctx.teacher = NotExportable()
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort"])).metrics["targets"]["cpu-ort"]
    assert "ONNX export" in t["models"]["teacher"]["error"]
    assert t["models"]["onnx-fp32"]["agreement"] is None  # no teacher predictions to agree with


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("all", ["teacher", "onnx-fp32", "onnx-copy"]), ("release", ["teacher", "onnx-fp32"]),
     (["onnx-copy"], ["teacher", "onnx-fp32", "onnx-copy"])],
)  # fmt: skip
def test_artifacts_choice_limits_what_each_target_measures(run: dict[str, Any], choice: Any, expected: list[str]) -> None:
    arts = [
        Artifact("onnx-fp32", "artifacts/model.fp32.onnx", "onnx", "fp32"),
        Artifact("onnx-copy", "artifacts/model.fp32.onnx", "onnx", "fp32"),
    ]
    ctx = _ctx(run, {"cpu-ort": _target(batch_sizes=[8], iterations=1)}, artifacts=arts)
    cfg = ValidateStageConfig(targets=["cpu-ort"], artifacts=choice, roofline=False)
    models = ValidateStage().run(ctx, cfg).metrics["targets"]["cpu-ort"]["models"]
    assert list(models) == expected  # the release artifact is always measured; a list adds to it


def test_paired_counts_of_an_artifact_that_differs_from_the_teacher(run: dict[str, Any]) -> None:
    """Who is right where teacher and artifact differ: the counts the accuracy gate's interval is made of."""
    other = tiny_vit(seed=1).eval()  # another random model: disagrees with the teacher on most examples
    export_onnx(other, run["root"] / "artifacts" / "other.fp32.onnx", run["data"].tensors("val")[0][:2])
    art = Artifact("onnx-other", "artifacts/other.fp32.onnx", "onnx", "fp32")
    ctx = _ctx(run, {"cpu-ort": _target(artifact="onnx-other")}, [art], stage="05-validate")
    t = ValidateStage().run(ctx, ValidateStageConfig(targets=["cpu-ort"])).metrics["targets"]["cpu-ort"]
    teacher, m = t["models"]["teacher"], t["models"]["onnx-other"]
    assert "paired" not in teacher
    assert "gpu_use" not in t  # asked on CUDA targets only
    p = m["paired"]
    n = len(run["data"].tensors("test")[1])
    assert p["examples"] == n
    assert p["teacher_only"] + p["artifact_only"] > 0
    drop = teacher["accuracy"] - m["accuracy"]
    assert (p["teacher_only"] - p["artifact_only"]) / n == pytest.approx(drop, abs=1e-9)
    assert p["teacher_only"] + p["artifact_only"] <= round((1 - m["agreement"]) * n)  # only where they differ
