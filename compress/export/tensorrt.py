"""TensorRT engines from ONNX, written against TensorRT's documented Python API (10.x and 11.x).

What it does (METHODS.md §4, "TensorRT Python build/run"):

1. ``trt.Builder`` with a network from ``create_network(flags)``. INT8 uses explicit Q/DQ
   (the ``onnx-int8`` S8S8 artifact) in a **strongly typed** network: precisions come from the
   graph, no calibrator (implicit calibration is deprecated since 10.1). FP16 on TensorRT 10
   is a weakly typed network with ``BuilderFlag.FP16`` over the FP32 ONNX; TensorRT 11 removed
   the precision flags, so there FP16 needs an FP16 ONNX in a strongly typed network, and
   asking for it from an FP32 ONNX is an error that says so.
2. ``trt.OnnxParser.parse_from_file``; every parser error is reported.
3. A builder config with the workspace limit (``set_memory_pool_limit(WORKSPACE, bytes)``), one
   optimization profile (``set_shape(name, min, opt, max)``) for every dynamic input, and a
   timing cache read from and written back to a file so later builds reuse tactic timings.
4. ``build_serialized_network`` (TensorRT 10 removed ``build_engine``), the plan written
   atomically, and a JSON sidecar: TensorRT version, GPU name and compute capability, profiles,
   precision, network flags, build seconds, the ONNX file's SHA-256.

Status: TensorRT's builder cannot be installed in the workplace this was written in, and
TensorRT-RTX refuses Hopper GPUs, so **no engine has been built or run by this code yet**. It is
tested against a fake ``tensorrt`` module at the API boundary (tests/unit/export/test_tensorrt.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compress._utils.io import atomic_write_bytes, atomic_write_json, sha256_file
from compress.errors import ExportError, MissingDependency

INSTALL_HINT = (
    "pip install tensorrt  (NVIDIA publishes the wheels; on machines without access, use the "
    "TensorRT container or install from https://developer.nvidia.com/tensorrt), on a machine with an NVIDIA GPU"
)

Precision = Literal["fp32", "fp16", "int8"]


def import_tensorrt() -> Any:
    """Import ``tensorrt`` or raise ``MissingDependency`` (exit 2) with the install command."""
    try:
        import tensorrt as trt  # noqa: PLC0415  (optional dependency)
    except ModuleNotFoundError as e:
        if e.name != "tensorrt":
            raise
        raise MissingDependency(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return trt


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shapes of one dynamic input."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the sidecar."""
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass
class EngineBuild:
    """What ``build_engine`` produced."""

    plan_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any] = field(default_factory=dict)


def batch_profiles(input_shapes: dict[str, tuple[int | str, ...]], batch_sizes: list[int]) -> list[ShapeProfile]:
    """Profiles from the target's batch sizes: min = smallest, opt = largest asked, max = largest.

    Args:
        input_shapes: Input name -> shape with symbolic axes as strings (``("batch", 1, 8, 8)``).
        batch_sizes: Batch sizes the target runs.

    Raises:
        ExportError: A non-batch axis is symbolic (give it a fixed size) or no batch sizes.
    """
    if not batch_sizes:
        raise ExportError("TensorRT profiles need at least one batch size")
    lo, hi = min(batch_sizes), max(batch_sizes)
    out = []
    for name, shape in input_shapes.items():
        rest = shape[1:]
        bad = [d for d in rest if not isinstance(d, int)]
        if bad:
            raise ExportError(f"input '{name}' has symbolic non-batch axes {bad}; TensorRT profiles need fixed sizes there")
        fixed = tuple(int(d) for d in rest)
        out.append(ShapeProfile(name, (lo, *fixed), (hi, *fixed), (hi, *fixed)))
    return out


def _gpu_info() -> dict[str, Any]:
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}"}
    except Exception as e:  # a GPU query must never break a build record
        return {"name": None, "compute_capability": None, "error": str(e)}
    return {"name": None, "compute_capability": None}


def build_engine(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    *,
    precision: Precision,
    profiles: list[ShapeProfile],
    workspace_mb: int = 2048,
    timing_cache: str | os.PathLike[str] | None = None,
    onnx_precision: Precision = "fp32",
) -> EngineBuild:
    """Build and serialize a TensorRT engine from an ONNX file.

    Args:
        onnx_path: The ONNX model (FP32, FP16, or S8S8 Q/DQ for INT8).
        plan_path: Where the serialized engine goes; the sidecar is ``<plan>.json``.
        precision: ``fp32``, ``fp16`` or ``int8`` (INT8 needs a Q/DQ ONNX).
        profiles: One ``ShapeProfile`` per dynamic input.
        workspace_mb: Builder workspace limit.
        timing_cache: File to read tactic timings from and write them back to.
        onnx_precision: Precision the ONNX file itself carries (``fp16`` for an FP16 export).

    Returns:
        Paths of the plan and sidecar, and the sidecar's content.

    Raises:
        MissingDependency: ``tensorrt`` is not installed (exit 2).
        ExportError: The parser rejected the ONNX, the precision cannot be built with this
            TensorRT version, or the build failed.
    """
    trt = import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    version = str(getattr(trt, "__version__", "0"))
    major = int(version.split(".")[0] or 0)
    if major < 10:
        raise ExportError(f"TensorRT {version} is too old: compress builds with TensorRT 10 or 11 (named-tensor API)")
    strongly_typed = precision == "int8" or major >= 11
    if major >= 11 and precision == "fp16" and onnx_precision != "fp16":
        raise ExportError(
            "TensorRT 11 removed BuilderFlag.FP16: an FP16 engine needs an FP16 ONNX (export format onnx-fp16) "
            f"in a strongly typed network; {onnx_path.name} is {onnx_precision}"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors or ["no detail"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not strongly_typed and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    by_name = {p.name: p for p in profiles}
    dynamic = [n for n in names if any(d < 0 for d in tuple(network.get_input(names.index(n)).shape))]
    missing = [n for n in dynamic if n not in by_name]
    if missing:
        raise ExportError(f"dynamic inputs {missing} have no optimization profile; give batch sizes for them")
    if dynamic:
        profile = builder.create_optimization_profile()
        for n in dynamic:
            p = by_name[n]
            profile.set_shape(n, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} ({precision}); see the log above")
    atomic_write_bytes(plan_path, bytes(plan))
    if timing_cache is not None:
        atomic_write_bytes(Path(timing_cache), bytes(cache.serialize()))
    sidecar = {
        "tensorrt_version": version,
        "gpu": _gpu_info(),
        "precision": precision,
        "onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "precision": onnx_precision},
        "strongly_typed": strongly_typed,
        "builder_flags": ["FP16"] if (not strongly_typed and precision == "fp16") else [],
        "profiles": [by_name[n].to_dict() for n in dynamic],
        "workspace_mb": workspace_mb,
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "build_seconds": round(seconds, 3),
    }
    side = plan_path.with_suffix(plan_path.suffix + ".json")
    atomic_write_json(side, sidecar)
    return EngineBuild(plan_path=plan_path, sidecar_path=side, sidecar=json.loads(json.dumps(sidecar)))


TEACHER_ONNX = "teacher.fp32.onnx"
TEACHER_ENGINE = "teacher.fp32.engine"


def build_teacher_engine(
    teacher: Any,
    out_dir: str | os.PathLike[str],
    example_inputs: Any,
    *,
    batch_sizes: list[int],
    workspace_mb: int = 2048,
    timing_cache: str | os.PathLike[str] | None = None,
) -> EngineBuild:
    """The teacher as an FP32 TensorRT engine, so a ``tensorrt`` target times teacher and artifacts alike.

    A deploy target measures the teacher on its own runtime (same shapes, same timer); the
    ``tensorrt`` runtime loads only engines, so the teacher is exported to FP32 ONNX
    (``teacher.fp32.onnx``, dynamic batch) and built as ``teacher.fp32.engine`` with one profile
    over ``batch_sizes`` (FP32: no precision flag on TensorRT 10; a strongly typed FP32 network
    on 11). Written against the API like ``build_engine``, and as untested on real TensorRT.

    Args:
        teacher: The full-precision teacher (``nn.Module``, eval mode; not modified).
        out_dir: Folder for the ONNX file, the plan and its sidecar (a stage folder).
        example_inputs: An input batch (shape ``[n, *example]``) for tracing and the profile's
            non-batch axes.
        batch_sizes: The target's batch sizes (profile min = smallest, opt = max = largest).
        workspace_mb: Builder workspace limit.
        timing_cache: Timing cache file shared with the artifacts' builds.

    Returns:
        The build record (plan, sidecar).

    Raises:
        MissingDependency: ``tensorrt`` is not installed (exit 2).
        ExportError: The teacher cannot be exported, or the engine cannot be built.

    Example:
        >>> build = build_teacher_engine(teacher, "stages/06", x[:2], batch_sizes=[1, 32])  # doctest: +SKIP
        >>> build.plan_path.name  # doctest: +SKIP
        'teacher.fp32.engine'
    """
    from compress.export.onnx import INPUT_NAME, export_onnx

    import_tensorrt()  # fail before exporting when TensorRT is missing
    out = Path(out_dir)
    onnx_path = export_onnx(teacher, out / TEACHER_ONNX, example_inputs)
    shapes: dict[str, tuple[int | str, ...]] = {INPUT_NAME: ("batch", *tuple(example_inputs.shape[1:]))}
    return build_engine(
        onnx_path,
        out / TEACHER_ENGINE,
        precision="fp32",
        profiles=batch_profiles(shapes, batch_sizes),
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
    )
