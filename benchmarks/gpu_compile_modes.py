"""What could close issue 8's H100 gap: inductor autotuning, the host path around a call, a shallower student.

Issue 8's goal on the H100 is the release artifact's p95 at least 15x below the FP32 teacher's on the same
compiled runtime (batch 32 x 128 tokens). Session 6 measured 8.77x (0.407 vs 3.569 ms p95) with compress's
``torch-compile`` runtime: inductor ``mode="default"``, each input shape captured in one CUDA graph. This
script times, for the teacher and for two students, three things that could move that ratio:

* **compile mode**: ``default`` against ``max-autotune-no-cudagraphs`` (inductor benchmarks Triton GEMM
  templates and may fuse epilogues into them; we capture CUDA graphs ourselves, so inductor's own are off);
* **host path** around one synchronised call (what the validate stage times):
  ``session``: as ``TorchSession.run`` does it (NumPy -> ``torch.from_numpy(...).to("cuda")`` -> copy into the
  graph's static input -> replay -> ``.float().cpu().numpy()``);
  ``pinned``: the input copied into a pinned host buffer, then one non-blocking copy straight into the graph's
  static input, the output cast inside the graph and copied into a pinned host buffer;
* **GPU time alone** (``gpu``): device-resident input, calls queued back to back, CUDA events;
* ``harness`` (``default`` mode only): compress's ``torch-compile`` session as it is now, timed by
  ``compress.bench.measure_latency`` exactly as the validate stage times artifacts.

Models (weights do not change timing): all-MiniLM-L6-v2 as the FP32 teacher (6 layers, TF32 off, as
compress's fp32 precision runs it); its 3-layer student (layers 1, 3, 5) with half its MACs pruned (heads and
FFN neurons, magnitude, round_to 8: the shape of ``pipelines/wordnet-minilm-gpu.yaml``'s release), fp16; and a
2-layer student (layers 2, 5) pruned the same way, fp16, to show what depth buys. The ratio table divides the
teacher's p95 by each student's, path by path and mode by mode.

  python benchmarks/gpu_compile_modes.py --out docs/results/latency-floor-h100/compile-modes
CPU smoke test (no CUDA; eager model, session path only, numbers meaningless):
  python benchmarks/gpu_compile_modes.py --quick --out /tmp/cm
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts

from gpu_latency_floor import cpu_timer, cuda_timer, minilm_student, minilm_teacher, p50_p95  # noqa: E402

MODES = ("default", "max-autotune-no-cudagraphs")


def minilm_models() -> dict[str, tuple[nn.Module, torch.dtype]]:
    """name -> (model, dtype): the FP32 MiniLM teacher; 3- and 2-layer fp16 students, half the MACs pruned."""
    teacher = minilm_teacher()
    return {
        "teacher L6 fp32": (teacher, torch.float32),
        "student L3 pruned 50% fp16": (minilm_student(teacher, [1, 3, 5], 0.5), torch.float16),
        "student L2 pruned 50% fp16": (minilm_student(teacher, [2, 5], 0.5), torch.float16),
    }


class _Logits(nn.Module):
    """The model's logits cast to float32 (so the cast is one of the graph's kernels)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()


def _time_one(
    model: nn.Module, dtype: torch.dtype, mode: str, feed: np.ndarray, args: argparse.Namespace
) -> dict:
    from compress.runtime.torch_compile import GraphedModule
    from compress.runtime.torch_eager import fp32_math

    cuda = torch.cuda.is_available() and not args.quick
    dev = torch.device("cuda" if cuda else "cpu")
    m = _Logits(copy.deepcopy(model).to(dev, dtype=dtype if cuda else torch.float32).eval())
    w, n = args.warmup, args.iterations
    row: dict[str, Any] = {}
    with torch.inference_mode(), fp32_math(allow_tf32=False):
        t0 = time.perf_counter()
        if cuda:
            torch._dynamo.reset()
            g: nn.Module = GraphedModule(torch.compile(m, mode=mode, dynamic=False))
            xd = torch.from_numpy(feed).to(dev)
            g(xd)  # compile (and autotune) + capture
            torch.cuda.synchronize()
        else:
            g = m
        row["compile_s"] = time.perf_counter() - t0
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def session() -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(feed)).to(dev)
            return g(x).detach().float().cpu().numpy()

        row["session"] = p50_p95(cpu_timer(lambda: (session(), sync()), w, n))
        if cuda:
            pin_in = torch.empty(feed.shape, dtype=torch.int64, pin_memory=True)
            ref = g(xd)
            pin_out = torch.empty(ref.shape, dtype=torch.float32, pin_memory=True)
            graph, static_in, _ = g.captured(tuple(xd.shape), xd.dtype)

            def pinned() -> np.ndarray:
                pin_in.numpy()[...] = feed
                static_in.copy_(pin_in, non_blocking=True)
                graph.replay()
                pin_out.copy_(ref, non_blocking=True)
                torch.cuda.current_stream().synchronize()
                return pin_out.numpy()

            row["pinned"] = p50_p95(cpu_timer(lambda: (pinned(), sync()), w, n))
            np.testing.assert_allclose(pinned(), session(), rtol=0, atol=0)  # same graph, same numbers
            row["gpu"] = p50_p95(cuda_timer(lambda: g(xd), w, n))
    torch._dynamo.reset()
    if cuda and mode == "default":
        row["harness"] = _harness(model, dtype, feed, w, n)
    return row


def _harness(model: nn.Module, dtype: torch.dtype, feed: np.ndarray, w: int, n: int) -> dict[str, float]:
    """compress's own ``torch-compile`` session timed by ``measure_latency``, as the validate stage does."""
    from compress.bench.latency import measure_latency
    from compress.runtime import open_session

    precision = "fp32" if dtype == torch.float32 else "fp16"
    with open_session("torch-compile", model, device="cuda", precision=precision) as sess:
        name = sess.inputs[0].name
        st = measure_latency(
            sess, lambda b: {name: feed[:b]}, batch_sizes=[len(feed)], warmup=w, iterations=n
        )[len(feed)]
    torch._dynamo.reset()
    return {"p50_ms": st.p50_ms, "p95_ms": st.p95_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: batch 2 x 16, 3 runs, eager.")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.warmup, args.iterations, args.modes = 2, 16, 1, 3, ["default"]
    torch.manual_seed(0)
    feed = torch.randint(
        1000, 2000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    ).numpy()
    models = minilm_models()
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        for name, (model, dtype) in models.items():
            row = {"model": name, "mode": mode, **_time_one(model, dtype, mode, feed, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(args, argv, rows)
    print(_write(args, argv, rows))
    return 0


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]]) -> str:
    paths = [p for p in ("gpu", "session", "pinned", "harness") if any(p in r for r in rows)]
    head = "| compile mode | model | compile s | " + " | ".join(f"{p} p50 / p95 ms" for p in paths) + " |\n"
    head += "|" + "---|" * (3 + len(paths)) + "\n"
    body = []
    for r in rows:
        cells = [r["mode"], r["model"], f"{r['compile_s']:.1f}"]
        cells += [f"{r[p]['p50_ms']:.3f} / {r[p]['p95_ms']:.3f}" if p in r else "" for p in paths]
        body.append("| " + " | ".join(cells) + " |")
    ratio = (
        "| compile mode | student | " + " | ".join(f"{p}: teacher p95 / student p95" for p in paths) + " |\n"
    )
    ratio += "|" + "---|" * (2 + len(paths)) + "\n"
    for mode in dict.fromkeys(r["mode"] for r in rows):
        teach = next((r for r in rows if r["mode"] == mode and r["model"].startswith("teacher")), None)
        for r in rows:
            if teach is None or r["mode"] != mode or r is teach:
                continue
            cells = [mode, r["model"]]
            cells += [f"{teach[p]['p95_ms'] / r[p]['p95_ms']:.2f}x" if p in r else "" for p in paths]
            ratio += "| " + " | ".join(cells) + " |\n"
    cmd = "python benchmarks/gpu_compile_modes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    note = " (QUICK: CPU smoke test, numbers meaningless)" if args.quick else ""
    text = (
        f"# Compile modes and host paths{note}\n\nCommand: `{cmd}`\n\n"
        f"Device: {dev}, torch {torch.__version__}; batch {args.batch} x {args.seq} tokens, "
        f"{args.iterations} timed runs after {args.warmup} warm-up\n\n"
        f"{head}" + "\n".join(body) + f"\n\n{ratio}"
    )
    (args.out / "compile-modes.md").write_text(text)
    (args.out / "compile-modes.json").write_text(
        json.dumps({"command": cmd, "device": dev, "rows": rows}, indent=1)
    )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
