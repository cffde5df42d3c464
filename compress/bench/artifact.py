"""Benchmark one artifact alone on one deploy target (what ``compress bench`` runs).

The artifact's format comes from its file name: ``.onnx`` (ONNX), ``.engine`` / ``.plan``
(TensorRT), ``.pt`` / ``.pth`` (a compress model file: architecture spec + state dict, as
``compress.models.save_model`` writes). The target (a ``TargetConfig``) picks runtime, device,
threads, precision, batch sizes and timing; its runtime must load that format.

Inputs are synthetic, drawn once with a fixed seed and rotated like the validate stage's:
float inputs standard normal; integer inputs token ids in ``[0, 100)``, except inputs whose name
contains ``mask`` (all ones) or ``type`` (all zeros). Axis 0 of every input is the batch; any
other symbolic axis (a sequence length) takes ``seq_len``, else, for integer (token) inputs, the
target's ``sequence_length``; a torch model that declares no input shape (a text model without
``example_inputs``) gets int64 token ids of shape ``(batch, seq_len)``. A token input whose
sequence axis is fixed (a TensorRT engine) at another length than the one asked is bad input.
The length fed to token inputs is recorded as ``sequence_length``. Timing, memory and the roofline are
measured exactly as in the validate stage (``measure_latency``, ``measure_memory``,
``GpuMemoryProbe``, ``compress.bench.roofline``). The roofline needs the MACs: they are counted
for a torch artifact (as the target's runtime executes it: ``Session.executed_model``; a text model
without ``example_inputs`` on one example of token ids at the fed length), and taken
from ``macs_per_example`` for ONNX and TensorRT files (which cannot be counted here); weight bytes
are the parameters at the target's precision for torch and the file size for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.bench.contention import gpu_use, timing_fields
from compress.bench.latency import measure_latency
from compress.bench.memory import GpuMemoryProbe, measure_memory
from compress.bench.roofline import device_rates, model_roofline, weight_bytes
from compress.errors import BadInputError

FORMAT_OF_SUFFIX = {
    ".onnx": "onnx",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".pt": "torch",
    ".pth": "torch",
}
"""Artifact format by file suffix."""


def artifact_format(path: Path) -> str:
    """The artifact format of ``path`` from its suffix.

    Raises:
        BadInputError: The suffix is not one compress benchmarks.

    Example:
        >>> artifact_format(Path("model.int8.onnx"))
        'onnx'
    """
    fmt = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(
            f"ARTIFACT: {path}: unknown artifact type '{path.suffix}'; expected one of "
            f"{', '.join(sorted(FORMAT_OF_SUFFIX))} (ONNX, TensorRT engine, compress model file)"
        )
    return fmt


def bench_artifact(
    path: Path,
    target: Any,
    *,
    batch_sizes: Sequence[int] | None = None,
    warmup: int | None = None,
    iterations: int | None = None,
    repeats: int | None = None,
    seq_len: int | None = None,
    macs_per_example: int | None = None,
    roofline: bool = True,
) -> dict[str, Any]:
    """Measure one artifact on one target: latency per batch size, memory, roofline.

    Args:
        path: The artifact file.
        target: A ``compress.config.schema.TargetConfig``.
        batch_sizes: Batch sizes to time; ``None``: the target's.
        warmup: Untimed calls per batch size; ``None``: the target's.
        iterations: Timed calls per batch size; ``None``: the target's.
        repeats: Timing sweeps; ``None``: the target's.
        seq_len: Size of every symbolic input axis other than the batch (sequence length);
            ``None``: the target's ``sequence_length`` for integer (token) inputs.
        macs_per_example: MACs of one example, for the roofline of ONNX and TensorRT artifacts.
        roofline: Measure the device rates and report the roofline floor.

    Returns:
        ``{"artifact", "format", "target", "runtime", "device", "threads", "precision",
        "sequence_length", "inputs", "memory", "latency": {batch: stats}, "roofline"}`` (JSON-ready;
        ``sequence_length`` is the token length fed, ``None`` without token inputs).

    Raises:
        BadInputError: Missing file, unknown type, a runtime that does not load the format, a
            symbolic axis without a length, a fixed token axis of another length than asked, or
            an artifact the runtime cannot load.
        MissingDependency: The target's runtime cannot run on this machine (the message says why).

    Example:
        >>> out = bench_artifact(Path("artifacts/model.int8.onnx"), load_target("deploy/cpu-ort.yaml"),
        ...                      batch_sizes=[1, 32])  # doctest: +SKIP
        >>> out["latency"]["32"]["p95_ms"]  # doctest: +SKIP
        1.4
    """
    from compress.runtime import RUNTIMES

    path = Path(path)
    if not path.is_file():
        raise BadInputError(
            f"ARTIFACT: {path} does not exist; give the path of an .onnx, .engine or .pt file"
        )
    fmt = artifact_format(path)
    runtime = RUNTIMES.get(target.runtime)
    if fmt not in runtime.formats:
        raise BadInputError(
            f"--target {target.name}: runtime '{target.runtime}' loads {', '.join(sorted(runtime.formats))} "
            f"artifacts, not {fmt} ({path.name}); pick a target whose runtime loads {fmt} (`compress targets`)"
        )
    sizes = list(dict.fromkeys(batch_sizes or target.batch_sizes))
    if any(b < 1 for b in sizes):
        raise BadInputError(f"--batch: batch sizes must be >= 1, got {sizes}")
    if seq_len is not None and seq_len < 1:
        raise BadInputError(f"--seq: must be >= 1, got {seq_len}")

    gpu = GpuMemoryProbe(target.device, runtime.gpu_allocator)
    gpu.start()
    holder: list[Any] = []
    memory = measure_memory(
        lambda: holder.append(
            runtime.load(path, device=target.device, threads=target.threads, precision=target.precision)
        )
    )
    sess = holder[0]
    try:
        make, fed_len = _input_maker(sess, seq_len, target)
        stats = measure_latency(
            sess,
            make,
            batch_sizes=sizes,
            warmup=target.warmup if warmup is None else warmup,
            iterations=target.iterations if iterations is None else iterations,
            repeats=target.repeats if repeats is None else repeats,
        )
        memory.update(gpu.stop())
        inputs = [s.to_dict() for s in sess.inputs]
        # who else held the GPU (asked while this process still holds its context)
        shared = gpu_use(target.device) if target.device.startswith("cuda") else None
    finally:
        sess.close()
    latency = {str(b): s.to_dict() for b, s in stats.items()}
    out: dict[str, Any] = {
        "artifact": str(path),
        "format": fmt,
        "target": target.name,
        "runtime": target.runtime,
        "device": target.device,
        "threads": target.threads,
        "precision": target.precision,
        "sequence_length": fed_len,
        "inputs": inputs,
        "memory": memory,
        "latency": latency,
    }
    if target.device.startswith("cuda"):
        out.update(timing_fields(shared))
    if roofline:
        out["roofline"] = _roofline(path, fmt, target, latency, macs_per_example, runtime, fed_len)
    return out


def _roofline(
    path: Path,
    fmt: str,
    target: Any,
    latency: dict[str, Any],
    macs: int | None,
    runtime: Any,
    token_len: int | None,
) -> dict[str, Any]:
    if fmt == "torch":
        import torch

        from compress.models import load_model
        from compress.models.stats import count_macs, count_streamed_params

        model = load_model(path)
        if macs is None:
            if hasattr(model, "example_inputs"):
                example = model.example_inputs(1)
            elif token_len is not None:  # a text model fed token ids: one example at the timed length
                example = torch.randint(1, 100, (1, token_len), generator=torch.Generator().manual_seed(0))
            else:
                return {"unavailable": "the model has no example_inputs() to count MACs with; pass --macs"}
            macs = count_macs(runtime.executed_model(model), example)
        moved = weight_bytes(count_streamed_params(model), target.precision)
    else:
        if macs is None:
            return {
                "unavailable": f"MACs of a {fmt} file are not counted here; pass --macs (e.g. from the run's report)"
            }
        moved = float(path.stat().st_size)
    rates = device_rates(target.device, target.precision, threads=target.threads)
    return model_roofline(
        macs_per_example=macs,
        bytes_moved=moved,
        latency=latency,
        matmul_flops_per_s=rates[0],
        copy_bytes_per_s=rates[1],
    )


def _is_token_input(dtype: str | None) -> bool:
    return dtype is not None and np.dtype(dtype).kind in "iu"


def _input_maker(
    sess: Any, seq_len: int | None, target: Any
) -> tuple[Callable[[int], dict[str, np.ndarray]], int | None]:
    """Input batches for ``sess`` and the token length they carry (``None``: no token input)."""
    target_len = getattr(target, "sequence_length", None)
    token_len = seq_len if seq_len is not None else target_len
    where = "--seq" if seq_len is not None else f"sequence_length {target_len} of target '{target.name}'"
    specs = list(sess.inputs)
    sizes: list[tuple[int, ...]] = []  # non-batch axes of each input
    fed: int | None = None
    for i, s in enumerate(specs):
        if s.shape is None:
            if token_len is None:
                raise BadInputError(
                    f"{sess.source}: input '{s.name}' has no declared shape (a model without example_inputs, "
                    "e.g. a Hugging Face text model); give --seq N (or set the target's sequence_length) to "
                    "feed token ids of shape (batch, N)"
                )
            # a torch model of unknown input: token ids (batch, N), the text models' input
            specs[i] = type(s)(s.name, ("batch", "sequence"), "int64")
            sizes.append((token_len,))
            fed = token_len
            continue
        tokens = _is_token_input(s.dtype)
        size = seq_len if not tokens else token_len
        dims: list[int] = []
        for axis, d in enumerate(s.shape[1:], start=1):
            if isinstance(d, int):
                if tokens and axis == 1 and token_len is not None and d != token_len:
                    raise BadInputError(
                        f"{sess.source}: input '{s.name}' has a fixed sequence length of {d} (a TensorRT "
                        f"engine's profile is fixed when it is built), but {where} asks for {token_len}; "
                        f"give --seq {d}"
                    )
                dims.append(d)
            elif size is None:
                raise BadInputError(
                    f"{sess.source}: input '{s.name}' axis {axis} is symbolic ('{d}'); "
                    "give its size with --seq N" + (" (or set the target's sequence_length)" if tokens else "")
                )
            else:
                dims.append(size)
        sizes.append(tuple(dims))
        if tokens and len(dims) == 1:
            fed = dims[0]
    rng = np.random.default_rng(0)

    def make(batch: int) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for s, rest in zip(specs, sizes, strict=True):
            shape = (batch, *rest)
            dtype = np.dtype(s.dtype or "float32")
            if dtype.kind == "f":
                feeds[s.name] = rng.standard_normal(shape).astype(dtype)
            elif "mask" in s.name:
                feeds[s.name] = np.ones(shape, dtype)
            elif "type" in s.name:
                feeds[s.name] = np.zeros(shape, dtype)
            else:
                feeds[s.name] = rng.integers(0, 100, shape).astype(dtype)
        return feeds

    return make, fed
