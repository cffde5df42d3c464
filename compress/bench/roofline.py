"""Roofline floor: the fastest a model could possibly run on a device, from two measured rates.

A model's forward pass must do its arithmetic and must read its weights. On a device whose
measured matrix rate is ``R`` FLOP/s (a large GEMM in the artifact's precision) and whose
measured copy rate is ``B`` bytes/s (a large device-to-device copy), the pass cannot take less
than::

    compute_ms = FLOPs / R * 1000        FLOPs = 2 x MACs per example x batch
    memory_ms  = bytes / B * 1000        bytes = parameters x bytes per element (artifact precision)
                                         (embedding tables excluded: a pass reads only its tokens' rows)
    floor_ms   = max(compute_ms, memory_ms)

and ``measured / floor`` says how far a measured latency is from that floor (1.0 = at the
roofline). Both terms are lower bounds on purpose: the bytes count only the weights, read once
(activations, the input copy and the output copy are left out), and the FLOPs count only the
multiply-accumulates ``compress.models.stats.count_macs`` sees (every matmul and convolution,
not the element-wise work). So the floor is optimistic and the ratio is an upper bound on the
headroom, never an excuse. The MACs are those the runtime executes (``Session.executed_model``):
``torch-compile`` skips work the logits do not need (the first-token last layer,
``compress.models.first_token``), so its floor counts what runs, not the model's full count.

The rates are *measured*, not taken from a data sheet, once per process and cached by
``(device, precision, threads)``:

* matrix rate: ``C = A @ B`` with square ``n x n`` operands, best of several timed calls,
  ``2 n^3`` FLOPs per call. On CUDA ``n = 4096`` in the precision's dtype (``int8``:
  ``torch._int_mm``). On CPU ``n = 512`` with the target's threads, and the faster of two
  libraries: an fp32 GEMM in torch and in ONNX Runtime (``MatMul``) for every float precision
  (CPU runtimes compute fp16 and int4 weight-only models in fp32), and for ``int8`` ONNX Runtime's
  integer GEMM (``MatMulInteger``, uint8 x int8: the kernel its U8S8 Q/DQ files run), or the
  fp32 rate where that is faster (no VNNI);
* copy rate: ``dst.copy_(src)`` of a 256 MB (CUDA) or 64 MB (CPU) buffer, best of several,
  counted as ``2 x nbytes`` per copy (one read and one write), i.e. the same convention as
  STREAM's "Copy".

Example:
    >>> floor = roofline_floor(flops=2e9, bytes_moved=1e6, matmul_flops_per_s=1e12, copy_bytes_per_s=1e9)
    >>> floor.compute_ms, floor.memory_ms, floor.floor_ms, floor.bound
    (2.0, 1.0, 2.0, 'compute')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from compress.errors import BadInputError

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "int8": 1.0,
    "int4": 0.5,
    "ternary": 0.25,
}
"""Bytes per weight at each artifact precision (ternary and int4 as packed)."""

_RATE_CACHE: dict[tuple[str, str, int | None], tuple[float, float]] = {}


@dataclass(frozen=True)
class RooflineFloor:
    """The roofline floor of one forward pass at one batch size.

    Attributes:
        flops: Floating-point (or integer) operations of the pass, ``2 x MACs``.
        bytes_moved: Bytes the pass must read at least (the weights).
        compute_ms: ``flops`` at the measured matrix rate.
        memory_ms: ``bytes_moved`` at the measured copy rate.
        floor_ms: ``max(compute_ms, memory_ms)``.
        bound: ``compute`` or ``memory``, whichever term sets the floor.
    """

    flops: float
    bytes_moved: float
    compute_ms: float
    memory_ms: float
    floor_ms: float
    bound: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (metrics.json)."""
        return asdict(self)


def roofline_floor(
    *, flops: float, bytes_moved: float, matmul_flops_per_s: float, copy_bytes_per_s: float
) -> RooflineFloor:
    """The floor of a pass doing ``flops`` and reading ``bytes_moved`` on a device with these rates.

    Args:
        flops: Operations of the pass (``2 x MACs``).
        bytes_moved: Bytes the pass reads at least.
        matmul_flops_per_s: Measured matrix rate of the device (FLOP/s).
        copy_bytes_per_s: Measured copy rate of the device (bytes/s).

    Returns:
        The two terms, their maximum and which one bounds.

    Raises:
        BadInputError: A negative amount or a non-positive rate.

    Example:
        >>> roofline_floor(flops=1e9, bytes_moved=4e6, matmul_flops_per_s=1e12,
        ...                copy_bytes_per_s=1e9).bound
        'memory'
    """
    if flops < 0 or bytes_moved < 0:
        raise BadInputError(f"roofline: flops and bytes must be >= 0, got {flops} and {bytes_moved}")
    if not matmul_flops_per_s > 0 or not copy_bytes_per_s > 0:
        raise BadInputError(
            f"roofline: rates must be > 0, got matmul {matmul_flops_per_s} FLOP/s, copy {copy_bytes_per_s} B/s"
        )
    compute_ms = flops / matmul_flops_per_s * 1000.0
    memory_ms = bytes_moved / copy_bytes_per_s * 1000.0
    bound = "compute" if compute_ms >= memory_ms else "memory"
    return RooflineFloor(flops, bytes_moved, compute_ms, memory_ms, max(compute_ms, memory_ms), bound)


def weight_bytes(params: int, precision: str | None) -> float:
    """Bytes of ``params`` weights stored at ``precision`` (unknown precisions count as fp32).

    Example:
        >>> weight_bytes(1000, "int8"), weight_bytes(1000, "fp16")
        (1000.0, 2000.0)
    """
    return params * BYTES_PER_ELEMENT.get(precision or "fp32", 4.0)


def model_roofline(
    *,
    macs_per_example: float,
    bytes_moved: float,
    latency: Mapping[str, Mapping[str, Any]],
    matmul_flops_per_s: float,
    copy_bytes_per_s: float,
) -> dict[str, Any]:
    """Roofline floor and measured/floor for every timed batch size of one model.

    Args:
        macs_per_example: Multiply-accumulates of one example (``count_macs``).
        bytes_moved: Bytes every pass reads at least (weights at the artifact's precision);
            weights are read once per call whatever the batch.
        latency: ``{batch: {"p50_ms": .., "p95_ms": ..}}`` as ``LatencyStats.to_dict`` gives.
        matmul_flops_per_s: Measured matrix rate.
        copy_bytes_per_s: Measured copy rate.

    Returns:
        ``{"macs_per_example", "bytes_moved", "matmul_flops_per_s", "copy_bytes_per_s",
        "by_batch": {batch: {**RooflineFloor.to_dict(), "p50_over_floor", "p95_over_floor"}}}``.

    Example:
        >>> r = model_roofline(macs_per_example=1e6, bytes_moved=0.0, latency={"2": {"p50_ms": 8.0, "p95_ms": 10.0}},
        ...                    matmul_flops_per_s=1e12, copy_bytes_per_s=1e9)
        >>> r["by_batch"]["2"]["floor_ms"], r["by_batch"]["2"]["p95_over_floor"]
        (0.004, 2500.0)
    """
    by_batch: dict[str, Any] = {}
    for b, stats in latency.items():
        floor = roofline_floor(
            flops=2.0 * macs_per_example * int(b),
            bytes_moved=bytes_moved,
            matmul_flops_per_s=matmul_flops_per_s,
            copy_bytes_per_s=copy_bytes_per_s,
        )
        row = floor.to_dict()
        for key in ("p50_ms", "p95_ms"):
            v = stats.get(key)
            ratio = v / floor.floor_ms if v is not None and floor.floor_ms > 0 else None
            row[key.replace("_ms", "_over_floor")] = ratio
        by_batch[str(b)] = row
    return {
        "macs_per_example": macs_per_example,
        "bytes_moved": bytes_moved,
        "matmul_flops_per_s": matmul_flops_per_s,
        "copy_bytes_per_s": copy_bytes_per_s,
        "by_batch": by_batch,
    }


# ------------------------------------------------------------------------- measured rates


def device_rates(device: str, precision: str | None, *, threads: int | None = None) -> tuple[float, float]:
    """Measured ``(matrix FLOP/s, copy bytes/s)`` of ``device`` in ``precision``, cached per process.

    Args:
        device: ``cpu`` or ``cuda``.
        precision: Artifact precision (``fp32``, ``fp16``, ``bf16``, ``int8``); see ``gemm_precision``.
        threads: CPU threads for the GEMM (the target's ``threads``); ``None``: torch's current count.

    Returns:
        The two rates, measured once per ``(device, precision, threads)`` in this process.

    Raises:
        BadInputError: ``device`` is neither ``cpu`` nor ``cuda``.
    """
    if device not in ("cpu", "cuda"):
        raise BadInputError(f"roofline: device must be cpu or cuda, got {device!r}")
    gemm = gemm_precision(device, precision)
    key = (device, gemm, threads if device == "cpu" else None)
    if key not in _RATE_CACHE:
        _RATE_CACHE[key] = (_matmul_rate(device, gemm, threads), _copy_rate(device, threads))
    return _RATE_CACHE[key]


def gemm_precision(device: str, precision: str | None) -> str:
    """The GEMM precision whose rate bounds an artifact of ``precision`` on ``device``.

    CUDA: the artifact's own (``fp32`` when unknown). CPU: ``int8`` for INT8 artifacts, else
    ``fp32`` (x86 runtimes compute fp16, bf16 and int4 weight-only models in fp32).
    """
    if device == "cpu":
        return "int8" if precision == "int8" else "fp32"
    return precision or "fp32"


def clear_rate_cache() -> None:
    """Forget measured rates (a new run, or tests)."""
    _RATE_CACHE.clear()


def _best_seconds(fn: Callable[[], None], sync: Callable[[], None], *, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _with_threads(threads: int | None, fn: Callable[[], float]) -> float:
    import torch

    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(prev)


def _matmul_rate(device: str, precision: str, threads: int | None) -> float:
    import torch

    if device == "cuda":
        n = 4096
        sync = torch.cuda.synchronize
        if precision == "int8":
            a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device="cuda")
            b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device="cuda")
            op: Callable[[], object] = lambda: torch._int_mm(a, b)  # noqa: E731
        else:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            op = lambda: a @ b  # noqa: E731
        secs = _best_seconds(lambda: (op(), None)[1], sync, reps=10)
        return 2.0 * n**3 / secs
    n = 512
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    secs = _with_threads(threads, lambda: _best_seconds(lambda: (a @ b, None)[1], lambda: None, reps=5))
    rate = max(2.0 * n**3 / secs, _ort_gemm_rate(n, "fp32", threads))
    if precision == "int8":
        rate = max(rate, _ort_gemm_rate(n, "int8", threads))
    return rate


def _ort_gemm_rate(n: int, precision: str, threads: int | None) -> float:
    """FLOP/s of one ``n x n`` GEMM on ONNX Runtime's CPU provider (``int8``: uint8 x int8 MatMulInteger)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "int8":
        a = rng.integers(0, 256, (n, n)).astype(np.uint8)
        w = rng.integers(-64, 64, (n, n)).astype(np.int8)
        op, in_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.standard_normal((n, n)).astype(np.float32)
        w = rng.standard_normal((n, n)).astype(np.float32)
        op, in_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", in_type, [n, n])],
        [helper.make_tensor_value_info("y", out_type, [n, n])],
        [numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", 13)]
    # the IR version opset 13 needs, not the installed onnx's newest: an onnx newer than onnxruntime
    # writes an IR version the runtime refuses (measured on the H100 machine: onnx IR 14, ORT 1.30 max 13)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    secs = _best_seconds(lambda: (sess.run(None, {"a": a}), None)[1], lambda: None, reps=5)
    return 2.0 * n**3 / secs


def _copy_rate(device: str, threads: int | None) -> float:
    import torch

    nbytes = 256_000_000 if device == "cuda" else 64_000_000
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        secs = _best_seconds(lambda: (dst.copy_(src), None)[1], sync, reps=10)
    else:
        secs = _with_threads(threads, lambda: _best_seconds(lambda: (dst.copy_(src), None)[1], sync, reps=3))
    return 2.0 * src.numel() * src.element_size() / secs
