"""``validate``: measure the teacher and every exported artifact on each deploy target.

For each target named in ``targets:`` (``deploy/<name>.yaml``), in one process,
with one runtime and the same shapes for every model:

* the teacher runs on the target's runtime too (exported to FP32 ONNX into the
  stage folder for ONNX-based runtimes, as the module for ``torch``), so
  accuracy drop, agreement and speed-up compare like with like;
* every artifact of a format the runtime loads is measured: accuracy and top-1
  agreement with the teacher's predictions on the whole ``split`` (batched at the
  largest timed batch size), file size, host memory around loading and one
  largest batch (``compress.bench.measure_memory``), peak GPU memory from load to
  the end of timing on CUDA targets (``compress.bench.GpuMemoryProbe``; ``None`` with
  the reason on CPU targets), latency per batch size
  (``compress.bench.measure_latency``, inputs drawn from the split and rotated; CUDA
  events on GPU, ``perf_counter`` on CPU, recorded as ``clock``), and the roofline
  floor per batch size (``compress.bench.roofline``: FLOPs from the model's MACs, the
  teacher's for the teacher and the exported model's for every artifact, counted as the
  target's runtime executes the model (``Session.executed_model``: ``torch-compile``'s
  inference rewrites skip work), weights at the precision the model runs in, over the
  target device's measured rates).

Token-id inputs (2-D integer arrays) are timed at the target's ``sequence_length``: every
timed row (and the memory probe's largest batch) is padded on the right with the teacher's
``pad_token_id`` (0 when it has none) or truncated to that length, and the roofline's MACs
are counted at it; ``null`` times at the data's length. Accuracy and agreement are always
measured on the split as tokenised. The length used is recorded as ``sequence_length``
(``null`` for image inputs; a target that sets one for image inputs gets
``sequence_length_note`` and is timed at the data's shape, since one target file serves many
pipelines). A model whose input has a fixed sequence axis of another length (a TensorRT
engine built for the data's length) is recorded with ``error``; the teacher's engine is
built at the timed length.

A target whose runtime cannot run on this machine (no GPU, package or provider
missing) is recorded with ``ran: false`` and the reason instead of failing the
run; the gates then fail closed. A target whose release artifact was not
produced gets ``release_missing``. A model that fails to load or run is recorded
with ``error`` and the other models are still measured.

Metrics (read by the gates and the report)::

    {"split": "test",
     "targets": {"cpu-ort": {
        "ran": true, "reason": null, "runtime": "onnxruntime", "device": "cpu", "threads": 2,
        "sequence_length": null,                         # token inputs: the length timed
        "release_artifact": "onnx-int8-u8",            # + "release_missing": "<why>" when absent
        "models": {"teacher": {"accuracy": 0.97, "agreement": 1.0, "size_mb": 0.41,
                               "memory": {"rss_delta_mb": .., "peak_rss_mb": ..,
                                          "gpu_peak_mb": null, "gpu_method": "not applicable: ..."},
                               "latency": {"1": {"p50_ms": .., ..., "clock": "perf_counter"}, "32": {...}},
                               "roofline": {"macs_per_example": .., "bytes_moved": ..,
                                            "by_batch": {"32": {"floor_ms": .., "p95_over_floor": ..}}},
                               "path": "stages/05-validate/teacher.fp32.onnx", "precision": "fp32"},
                   "onnx-fp32": {...},
                   "onnx-int8-u8": {...,
                                    "paired": {"examples": 360, "teacher_only": 4, "artifact_only": 1}}}}}}
                   # paired (artifacts only): where only one of teacher and artifact is right, the counts
                   # of the accuracy gate's confidence interval (compress.report.confidence)

Example (pipeline YAML)::

    - validate:
        targets: [cpu-ort]
        split: test
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from compress._utils.registry import did_you_mean
from compress.bench import (
    GpuMemoryProbe,
    GpuUse,
    device_rates,
    gemm_precision,
    gpu_use,
    measure_latency,
    measure_memory,
    model_roofline,
    timing_fields,
    weight_bytes,
)
from compress.errors import BadInputError, CompressError, ConfigError, UnknownNameError
from compress.export import export_onnx
from compress.export.parity import as_numpy_input
from compress.report.confidence import PairedCounts
from compress.runtime import RUNTIMES, Session
from compress.stages.base import Stage, StageConfig, StageContext, StageResult, register_stage

TEACHER = "teacher"
TEACHER_ONNX = "teacher.fp32.onnx"
_MB = 1e6


class ValidateStageConfig(StageConfig):
    """Which deploy targets to measure on, on which split, and optional timing overrides."""

    targets: list[str] = Field(
        min_length=1, description="Deploy target names (deploy/<name>.yaml) to validate on, e.g. [cpu-ort]."
    )
    split: Literal["test", "val"] = Field("test", description="Data split for accuracy and agreement.")
    batch_sizes: list[int] | None = Field(
        None, min_length=1, description="Batch sizes to time, overriding every target's batch_sizes."
    )
    iterations: int | None = Field(
        None, ge=1, description="Timed runs per batch size, overriding the targets'."
    )
    warmup: int | None = Field(None, ge=0, description="Untimed runs before timing, overriding the targets'.")
    artifacts: Literal["all", "release"] | list[str] = Field(
        "all",
        description="Artifacts measured on each target beside the teacher: 'all' (every artifact of a format "
        "the target's runtime loads), 'release' (only the target's own release artifact) or a list of names.",
    )
    roofline: bool = Field(
        True,
        description="Measure the device's matrix and copy rates once and report each model's roofline floor.",
    )

    @field_validator("targets")
    @classmethod
    def _distinct_targets(cls, v: list[str]) -> list[str]:
        dupes = sorted({t for t in v if v.count(t) > 1})
        if dupes:
            raise ValueError(f"targets are listed more than once: {dupes}; list each target once")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be >= 1, got {v}")
        return v


@register_stage
class ValidateStage(Stage):
    """Measure teacher and artifacts on deploy targets: accuracy, agreement, size, memory, latency."""

    name = "validate"
    config_class = ValidateStageConfig
    requires = frozenset({"export"})
    max_count = 1
    description = (
        "Measure teacher and exported artifacts on deploy targets (accuracy, agreement, latency, size)."
    )

    def run(self, ctx: StageContext, cfg: ValidateStageConfig) -> StageResult:
        """Validate every configured target; see the module docstring for the metrics.

        Raises:
            ConfigError: A target name is not among the loaded deploy targets.
        """
        unknown = [t for t in cfg.targets if t not in ctx.targets]
        if unknown:
            known = sorted(ctx.targets)
            raise ConfigError(
                [
                    f"{ctx.yaml_path}.targets: unknown deploy target '{t}'{did_you_mean(t, known)}; "
                    f"loaded targets: {', '.join(known) or 'none'} (add deploy/{t}.yaml)"
                    for t in unknown
                ]
            )
        x, y = ctx.data.tensors(cfg.split)
        split = _Split(np.ascontiguousarray(as_numpy_input(x)), y.numpy(), seed=ctx.seed)
        teacher_sources: dict[str, Any] = {}
        targets = {
            name: self._validate_target(ctx, cfg, name, split, teacher_sources) for name in cfg.targets
        }
        return StageResult(metrics={"split": cfg.split, "targets": targets})

    # ------------------------------------------------------------------ per target

    def _validate_target(
        self,
        ctx: StageContext,
        cfg: ValidateStageConfig,
        name: str,
        split: _Split,
        teacher_sources: dict[str, Any],
    ) -> dict[str, Any]:
        t = ctx.targets[name]
        seq, seq_note = _timed_length(split, t.sequence_length, name)
        out: dict[str, Any] = {
            "ran": False,
            "reason": None,
            "runtime": t.runtime,
            "device": t.device,
            "threads": t.threads,
            "sequence_length": seq,
            "release_artifact": t.artifact,
            "models": {},
        }
        if seq_note is not None:
            out["sequence_length_note"] = seq_note
        try:
            runtime = RUNTIMES.get(t.runtime)
        except UnknownNameError as e:
            runtime, out["reason"] = None, str(e)
        if runtime is not None:
            ok, why = runtime.can_run_here(t.device)
            if not ok:
                out["reason"] = why

        release = ctx.artifacts.get(t.artifact)
        if release is None:
            produced = ", ".join(sorted(ctx.artifacts)) or "none"
            out["release_missing"] = (
                f"artifact '{t.artifact}' of target '{name}' was not produced by any stage "
                f"(produced: {produced}); add it to the export stage"
            )
        elif runtime is not None and release.format not in runtime.formats:
            out["release_missing"] = (
                f"artifact '{t.artifact}' has format '{release.format}', which runtime '{t.runtime}' "
                f"does not load (it loads: {', '.join(sorted(runtime.formats))})"
            )

        if out["reason"] is not None or runtime is None:
            ctx.reporter.line(f"  validate {name}: not run here: {out['reason']}")
            return out
        out["ran"] = True
        if seq is not None:
            split = split.at_length(seq, _pad_token_id(ctx.teacher))

        batch_sizes = list(dict.fromkeys(cfg.batch_sizes or t.batch_sizes))
        timing = {
            "batch_sizes": batch_sizes,
            "warmup": t.warmup if cfg.warmup is None else cfg.warmup,
            "iterations": t.iterations if cfg.iterations is None else cfg.iterations,
            "repeats": t.repeats,
        }
        models: list[tuple[str, Any, str | None, str]] = []  # (name, source, path rel. to run dir, precision)
        try:
            tsrc, tpath = self._teacher_source(ctx, runtime, teacher_sources, batch_sizes, split)
            models.append((TEACHER, tsrc, tpath, "fp32"))
        except CompressError as e:
            out["models"][TEACHER] = {"error": str(e)}
            ctx.reporter.line(f"  validate {name}: teacher: error: {e}")
        for art in ctx.artifacts.values():
            wanted = (
                cfg.artifacts == "all"
                or (cfg.artifacts == "release" and art.name == t.artifact)
                or (isinstance(cfg.artifacts, list) and (art.name in cfg.artifacts or art.name == t.artifact))
            )
            if wanted and art.format in runtime.formats:
                models.append((art.name, ctx.run_dir / art.path, art.path, art.precision))

        costs = self._costs(ctx, split, runtime) if cfg.roofline else {}
        teacher_preds: np.ndarray | None = None
        gpu_looks: list[GpuUse | None] = []  # who else held the GPU, looked at after each model's timing
        for model_name, source, rel_path, precision in models:
            try:
                # runtimes that pick the compute precision at load time (torch, torchao) run artifacts at
                # the target's precision and the teacher in FP32, on the same runtime and shapes
                run_precision = "fp32" if model_name == TEACHER else t.precision
                entry, preds = _measure_model(runtime, source, t.device, t.threads, split, timing, run_precision)
                if t.device.startswith("cuda"):
                    gpu_looks.append(gpu_use(t.device))
            except CompressError as e:
                out["models"][model_name] = {"error": str(e)}
                ctx.reporter.line(f"  validate {name}: {model_name}: error: {e}")
                continue
            if model_name == TEACHER:
                teacher_preds = preds
            entry["agreement"] = None if teacher_preds is None else float(np.mean(preds == teacher_preds))
            if teacher_preds is not None and model_name != TEACHER:
                # who is right where the two differ: the accuracy gate's confidence interval
                entry["paired"] = PairedCounts.of(split.labels, teacher_preds, preds).to_dict()
            entry["size_mb"] = _size_mb(source)
            entry["path"] = rel_path
            entry["precision"] = precision
            if cfg.roofline:
                # the precision the model computes in: torch-family runtimes cast to the target's
                compute_precision = run_precision if "torch" in runtime.formats else precision
                entry["roofline"] = _roofline(
                    costs.get(TEACHER if model_name == TEACHER else "model"), entry["latency"], t, compute_precision
                )
            out["models"][model_name] = _ordered(entry)
            big = str(max(batch_sizes))
            shape = big if seq is None else f"{big}x{seq}"
            agreement = "n/a" if entry["agreement"] is None else f"{entry['agreement']:.4f}"
            ctx.reporter.line(
                f"  validate {name}: {model_name:<14} accuracy {entry['accuracy']:.4f}  "
                f"agreement {agreement}  p95@{shape} {entry['latency'][big]['p95_ms']:.3f} ms  "
                f"{entry['size_mb']:.3f} MB"
            )
        if t.device.startswith("cuda"):
            out.update(timing_fields(GpuUse.merged(gpu_looks)))
            if "timing_note" in out:
                ctx.reporter.line(f"  validate {name}: warning: {out['timing_note']}")
        return out

    def _costs(
        self, ctx: StageContext, split: _Split, runtime: type[Session]
    ) -> dict[str, tuple[int, int] | str]:
        """(MACs per example at the timed shape as ``runtime`` executes the model, parameters a pass reads
        whole) of the teacher and of the exported model, or why not."""
        from compress.models.stats import count_macs, count_streamed_params

        out: dict[str, tuple[int, int] | str] = {}
        example = _timed_example(ctx, split, 1)
        for key, model in ((TEACHER, ctx.teacher), ("model", ctx.model)):
            try:
                if key == "model" and "torch" in runtime.formats:
                    model = _torch_artifact_model(model)
                out[key] = (count_macs(runtime.executed_model(model), example), count_streamed_params(model))
            except Exception as e:  # a model the FLOP counter cannot trace: the floor is just not reported
                out[key] = f"MACs could not be counted: {type(e).__name__}: {e}"
        return out

    def _teacher_source(
        self,
        ctx: StageContext,
        runtime: type[Session],
        cache: dict[str, Any],
        batch_sizes: list[int],
        split: _Split | None = None,
    ) -> tuple[Any, str | None]:
        """The teacher in a form ``runtime`` loads: the module (torch), an FP32 ONNX file or an FP32 engine."""
        if "torch" in runtime.formats:
            return ctx.teacher, None
        if "tensorrt" in runtime.formats:
            # an engine's profile fixes the non-batch axes: build it at the timed sequence length
            length = None if split is None else split.length
            key = f"engine@{batch_sizes}@{length}"
            if key not in cache:
                from compress.export.tensorrt import build_teacher_engine

                folder = "teacher-trt" if length is None else f"teacher-trt-seq{length}"
                cache[key] = build_teacher_engine(
                    ctx.teacher, ctx.stage_dir / folder, _timed_example(ctx, split, 2), batch_sizes=batch_sizes
                ).plan_path
            return cache[key], _relative(cache[key], ctx.run_dir)
        if "onnx" in runtime.formats:
            if "onnx" not in cache:
                path = export_onnx(ctx.teacher, ctx.stage_dir / TEACHER_ONNX, ctx.example_inputs(2))
                cache["onnx"] = path
            path = cache["onnx"]
            return path, _relative(path, ctx.run_dir)
        raise BadInputError(
            f"runtime '{runtime.name}' loads only {sorted(runtime.formats)}; compress cannot build the "
            "teacher in that format, so agreement and accuracy drop cannot be measured on this target"
        )


# ---------------------------------------------------------------------- helpers


class _Split:
    """The evaluation split as NumPy arrays, plus seeded batch drawing for timing.

    ``inputs`` are the split as tokenised (accuracy, agreement); ``timed`` are the rows timing and
    the memory probe feed: the same array, or token ids padded/truncated to ``length``.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        timed: np.ndarray | None = None,
        length: int | None = None,
    ) -> None:
        self.inputs = inputs
        self.labels = labels
        self.seed = seed
        self.timed = inputs if timed is None else timed
        self.length = length

    @property
    def is_tokens(self) -> bool:
        """Whether the inputs are token ids: (N, L) integers."""
        return self.inputs.ndim == 2 and self.inputs.dtype.kind in "iu"

    def at_length(self, length: int, pad_id: int) -> _Split:
        """This split with timed rows of token ids right-padded with ``pad_id`` or truncated to ``length``."""
        have = self.inputs.shape[1]
        if length <= have:
            timed = np.ascontiguousarray(self.inputs[:, :length])
        else:
            timed = np.full((len(self.inputs), length), pad_id, dtype=self.inputs.dtype)
            timed[:, :have] = self.inputs
        return _Split(self.inputs, self.labels, seed=self.seed, timed=timed, length=length)

    def rows(self, batch: int) -> np.ndarray:
        """The first ``batch`` timed rows (cycled when the split is smaller)."""
        return self.timed[np.arange(batch) % len(self.timed)]

    def sampler(self, input_name: str) -> Callable[[int], dict[str, np.ndarray]]:
        """A ``make_inputs`` for ``measure_latency``: random timed rows, same sequence for every model."""
        rng = np.random.default_rng(self.seed)
        n = len(self.timed)

        def make_inputs(batch: int) -> dict[str, np.ndarray]:
            return {input_name: self.timed[rng.choice(n, size=batch, replace=batch > n)]}

        return make_inputs


def _timed_length(split: _Split, asked: int | None, target: str) -> tuple[int | None, str | None]:
    """The sequence length a target times at (``None`` for non-token inputs) and a note when ``asked`` is unused."""
    if split.is_tokens:
        return (split.inputs.shape[1] if asked is None else asked), None
    if asked is None:
        return None, None
    shape = "x".join(str(d) for d in split.inputs.shape[1:])
    return None, (
        f"sequence_length {asked} of target '{target}' not applied: the inputs are not token ids "
        f"({split.inputs.dtype} examples of shape {shape}); timed at the data's shape"
    )


def _pad_token_id(teacher: Any) -> int:
    """The teacher's padding id (``SourceModel.pad_token_id``, else its HF config's), else 0."""
    pad = getattr(teacher, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(teacher, "config", None), "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _timed_example(ctx: StageContext, split: _Split | None, batch: int) -> torch.Tensor:
    """``batch`` timed rows as a tensor (token inputs at the timed length), else the context's example."""
    if split is None or split.length is None:
        return ctx.example_inputs(batch)
    return torch.from_numpy(split.rows(batch).copy())


def _measure_model(
    runtime: type[Session],
    source: Any,
    device: str,
    threads: int | None,
    split: _Split,
    timing: dict[str, Any],
    precision: str | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Load one model and measure memory, accuracy and latency; return metrics and predictions."""
    largest = max(timing["batch_sizes"])
    holder: list[Session] = []
    gpu = GpuMemoryProbe(device, runtime.gpu_allocator)
    gpu.start()

    def load_and_run_largest() -> None:
        sess = runtime.load(source, device=device, threads=threads, precision=precision)
        holder.append(sess)
        _check_fixed_length(sess, split.length)
        sess.run({_single_input(sess): split.rows(largest)})
        sess.synchronize()

    try:
        memory = measure_memory(load_and_run_largest)
    except BaseException:
        for loaded in holder:
            loaded.close()
        raise
    sess = holder[0]
    try:
        input_name = _single_input(sess)
        logits = [
            sess.run({input_name: split.inputs[i : i + largest]})[0]
            for i in range(0, len(split.inputs), largest)
        ]
        preds = np.concatenate(logits).argmax(axis=-1)
        stats = measure_latency(
            sess,
            split.sampler(input_name),
            batch_sizes=timing["batch_sizes"],
            warmup=timing["warmup"],
            iterations=timing["iterations"],
            repeats=timing["repeats"],
        )
        memory.update(gpu.stop())
    finally:
        sess.close()
    entry = {
        "accuracy": float(np.mean(preds == split.labels)),
        "memory": memory,
        "latency": {str(b): s.to_dict() for b, s in stats.items()},
    }
    return entry, preds


def _torch_artifact_model(model: torch.nn.Module) -> torch.nn.Module:
    """What the ``torch-fp32`` artifact of ``model`` holds (export's plain float copy), else ``model``."""
    from compress.stages.export import plain_float_copy

    try:
        return plain_float_copy(model)
    except Exception:  # noqa: BLE001  (a model without a spec: count the stage's model itself)
        return model


def _roofline(
    cost: tuple[int, int] | str | None, latency: dict[str, Any], target: Any, precision: str | None
) -> dict[str, Any]:
    """Roofline of one model on ``target`` (see ``compress.bench.roofline``), or why it is missing."""
    if not isinstance(cost, tuple):
        return {"unavailable": cost or "MACs unknown"}
    macs, params = cost
    flops_rate, copy_rate = device_rates(target.device, precision, threads=target.threads)
    out = model_roofline(
        macs_per_example=macs,
        bytes_moved=weight_bytes(params, precision),
        latency=latency,
        matmul_flops_per_s=flops_rate,
        copy_bytes_per_s=copy_rate,
    )
    out["gemm_precision"] = gemm_precision(target.device, precision)
    return out


def _check_fixed_length(sess: Session, length: int | None) -> None:
    """Fail with the fix when the model's sequence axis is fixed at another length than the timed one."""
    shape = sess.inputs[0].shape if len(sess.inputs) == 1 else None
    if length is None or shape is None or len(shape) != 2 or not isinstance(shape[1], int) or shape[1] == length:
        return
    raise BadInputError(
        f"{sess.source} takes token sequences of fixed length {shape[1]} (a TensorRT engine's profile is "
        f"fixed at export), but this target times at sequence length {length}; set the target's "
        f"sequence_length to {shape[1]} (or null for the data's length) or build the engine for {length}"
    )


def _single_input(sess: Session) -> str:
    if len(sess.inputs) != 1:
        raise BadInputError(
            f"{sess.source} has {len(sess.inputs)} inputs ({[s.name for s in sess.inputs]}); "
            "validate feeds one image tensor and needs exactly one input"
        )
    return sess.inputs[0].name


def _size_mb(source: Any) -> float:
    """File size in MB (10^6 bytes); for an in-memory module, the bytes of its parameters and buffers."""
    if isinstance(source, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*source.parameters(), *source.buffers())) / _MB
    return os.path.getsize(source) / _MB


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _ordered(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "agreement", "size_mb", "memory", "latency", "roofline", "path", "precision")
    return {k: entry[k] for k in keys if k in entry} | {k: v for k, v in entry.items() if k not in keys}
