"""Where one timed call of compress's ``torch-compile`` session goes on a GPU, layer by layer of the call.

Issue 8 asks the release artifact's p95 on the H100 to be at least 15x below the FP32 teacher's, both on
the same compiled runtime (batch 32 x 128 tokens). Session 8 measured (docs/results/latency-floor-h100/
compile-modes-harness.md) that the CUDA graph alone would allow about 14x (3-layer student) and 20x
(2-layer), but compress's session timed by ``measure_latency`` (what the validate stage gates) gave 8.1x
and 9.3x: a fixed cost per call of 0.1-0.2 ms on top of the graph, and for the teacher 0.3 ms more than a
hand-written pinned path.

This script opens one compress ``torch-compile`` session per model and times the same call peeled one
layer at a time, in interleaved rounds (a drift of the machine shows as round-to-round spread, not as a
layer's cost):

* ``harness``: ``compress.bench.measure_latency`` (CUDA events around ``run`` + ``synchronize``), as validate;
* ``harness-perf``: the same ``measure_latency`` call with ``clock="perf_counter"`` (host clock): the
  cost of the CUDA-event clock itself is harness - harness-perf;
* ``run+sync``: ``session.run(feed)`` then ``session.synchronize()``, by the host clock (no events);
* ``run``: ``session.run(feed)`` alone (run+sync - run: the session's ``synchronize``; run - run_impl: the
  base class's checks and wrapper);
* ``run_impl``: the runtime's own work only (``_run_impl``: no input/output checks; it waits for its copies);
  in session 10 the lean replay path of a captured shape, in session 11 first a host graph (the copies
  captured inside the graph), then the shape's ``CapturedCall`` (kept buffers, copies queued around replay);
* ``module``: what ``_run_impl`` did before (``TorchSession._run_impl``: pinned copy to a device tensor, the
  cast, the graphed module's call under the precision context, a float32 copy out), the same run's "before";
* ``staged``: pinned copy in, the graphed module's call, pinned copy out (no checks, no precision context);
* ``direct``: what a leaner call path could reach: the input written into a pinned buffer and copied
  straight into the graph's static input, replay, the outputs copied in their own dtype into pinned buffers
  (no intermediate device tensor, no cast outside the graph, no Python layers);
* ``replay``: the graph's replay and a stream wait, input already on the device (no copies);
* ``gpu``: replays queued back to back, CUDA events only (the GPU's own time).

Models as in ``gpu_compile_modes.py`` (weights do not change timing): all-MiniLM-L6-v2 as the FP32 teacher
(TF32 off), 3-layer and 2-layer students with half the MACs pruned, fp16.

  python benchmarks/gpu_call_breakdown.py --out docs/results/latency-floor-h100/call-breakdown
CPU smoke test (no CUDA: the torch-compile session on CPU, ``staged``/``direct``/``replay``/``gpu`` left out):
  python benchmarks/gpu_call_breakdown.py --quick --out /tmp/cb
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts

from gpu_compile_modes import minilm_models  # noqa: E402
from gpu_latency_floor import cpu_timer, cuda_timer, p50_p95  # noqa: E402

PATHS = (
    "harness",
    "harness-perf",
    "run+sync",
    "run",
    "run_impl",
    "module",
    "staged",
    "direct",
    "replay",
    "gpu",
)


def _time_model(model: torch.nn.Module, precision: str, feed: np.ndarray, args: argparse.Namespace) -> dict:
    from compress.bench.latency import measure_latency
    from compress.runtime import open_session
    from compress.runtime.torch_compile import reset_compiled
    from compress.runtime.torch_eager import TorchSession

    cuda = torch.cuda.is_available() and not args.quick
    dev = "cuda" if cuda else "cpu"
    w, n = args.warmup, args.iterations
    rounds: list[dict[str, dict[str, float]]] = []
    t0 = time.perf_counter()
    with open_session("torch-compile", model, device=dev, precision=precision if cuda else "fp32") as sess:
        name = sess.inputs[0].name
        feeds = {name: feed}
        for _ in range(w):
            sess.run(feeds)
        sess.synchronize()
        compile_s = time.perf_counter() - t0

        def run_sync() -> None:
            sess.run(feeds)
            sess.synchronize()

        def harness(clock: str = "auto") -> dict[str, float]:
            st = measure_latency(
                sess, lambda b: {name: feed[:b]}, batch_sizes=[len(feed)], warmup=w, iterations=n, clock=clock
            )[len(feed)]
            return {"p50_ms": st.p50_ms, "p95_ms": st.p95_ms}

        paths: dict[str, Callable[[], dict[str, float]]] = {
            "harness": harness,
            "harness-perf": lambda: harness("perf_counter"),
            "run+sync": lambda: p50_p95(cpu_timer(run_sync, 0, n)),
            "run": lambda: p50_p95(cpu_timer(lambda: sess.run(feeds), 0, n)),
            "run_impl": lambda: p50_p95(cpu_timer(lambda: sess._run_impl(feeds), 0, n)),
            "module": lambda: p50_p95(cpu_timer(lambda: TorchSession._run_impl(sess, feeds), 0, n)),
        }
        if cuda:
            from compress.runtime.torch_eager import _as_list

            graphed, staging, target = sess._model, sess._staging, sess._target
            graph, static_in, static_out = graphed.captured(tuple(feed.shape), torch.int64)
            outs = _as_list(static_out)
            pin_in = staging.buffer(tuple(feed.shape), torch.int64)
            pin_outs = [staging.buffer(tuple(o.shape), o.dtype) for o in outs]  # same dtype: one DMA copy

            def staged() -> None:
                x = staging.to_device(feed, target)
                staging.to_host(_as_list(graphed(x)), target)

            def direct() -> None:
                pin_in.numpy()[...] = feed
                static_in.copy_(pin_in, non_blocking=True)
                graph.replay()
                for o, host in zip(outs, pin_outs, strict=True):
                    host.copy_(o, non_blocking=True)
                torch.cuda.current_stream().synchronize()

            def replay() -> None:
                graph.replay()
                torch.cuda.current_stream().synchronize()

            paths["staged"] = lambda: p50_p95(cpu_timer(staged, 0, n))
            paths["direct"] = lambda: p50_p95(cpu_timer(direct, 0, n))
            paths["replay"] = lambda: p50_p95(cpu_timer(replay, 0, n))
            paths["gpu"] = lambda: p50_p95(cuda_timer(graph.replay, 0, n))
        names = list(paths)
        for r in range(args.rounds):
            rnd = {}
            # each round starts at another path, so no path always runs in the same place (session 10, in
            # a fixed order: the teacher's first two paths of a round were 0.1 ms slower than the third,
            # whatever their clock)
            start = r * len(names) // args.rounds
            for p in names[start:] + names[:start]:
                fn = paths[p]
                with torch.inference_mode():
                    # each path's own warm-up (its first calls are not the last path's); it also leaves the
                    # feed in the graph's static input, which `replay` and `gpu` replay without copying
                    for _ in range(w):
                        run_sync()
                    rnd[p] = fn()
            rounds.append(rnd)
    reset_compiled()
    return {"compile_s": compile_s, "rounds": rounds}


def _median_of_rounds(row: dict, path: str, stat: str) -> float | None:
    vals = [r[path][stat] for r in row["rounds"] if path in r]
    return float(np.median(vals)) if vals else None


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]]) -> str:
    paths = [p for p in PATHS if any(p in r["rounds"][0] for r in rows)]
    lines = [
        "| model | compile + warm-up s | "
        + " | ".join(f"{p} p50 / p95 ms (min–max p95 over rounds)" for p in paths)
        + " |",
        "|" + "---|" * (2 + len(paths)),
    ]
    for r in rows:
        cells = [r["model"], f"{r['compile_s']:.1f}"]
        for p in paths:
            p95s = [x[p]["p95_ms"] for x in r["rounds"]]
            cells.append(
                f"{_median_of_rounds(r, p, 'p50_ms'):.3f} / {_median_of_rounds(r, p, 'p95_ms'):.3f} "
                f"({min(p95s):.3f}–{max(p95s):.3f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    teach = next((r for r in rows if r["model"].startswith("teacher")), None)
    ratio = ["| student | " + " | ".join(f"{p}: teacher p95 / student p95" for p in paths) + " |"]
    ratio.append("|" + "---|" * (1 + len(paths)))
    for r in rows:
        if teach is None or r is teach:
            continue
        cells = [r["model"]]
        for p in paths:
            cells.append(f"{_median_of_rounds(teach, p, 'p95_ms') / _median_of_rounds(r, p, 'p95_ms'):.2f}x")
        ratio.append("| " + " | ".join(cells) + " |")
    cmd = "python benchmarks/gpu_call_breakdown.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    note = " (QUICK: CPU smoke test, numbers meaningless)" if args.quick else ""
    text = (
        f"# One timed call of the torch-compile session, layer by layer{note}\n\nCommand: `{cmd}`\n\n"
        f"Device: {dev}, torch {torch.__version__}; batch {args.batch} x {args.seq} tokens, "
        f"{args.iterations} timed calls after {args.warmup} warm-up per path and round; {args.rounds} "
        "interleaved rounds, each cell the median over rounds\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(ratio)
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "call-breakdown.md").write_text(text)
    (args.out / "call-breakdown.json").write_text(
        json.dumps({"command": cmd, "device": dev, "torch": torch.__version__, "rows": rows}, indent=1)
    )
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: batch 2 x 16, 5 calls, 2 rounds.")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.warmup, args.iterations, args.rounds = 2, 16, 1, 5, 2
    torch.manual_seed(0)
    feed = torch.randint(1000, 2000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    feed = feed.numpy()
    rows: list[dict[str, Any]] = []
    for name, (model, dtype) in minilm_models().items():
        precision = "fp32" if dtype == torch.float32 else "fp16"
        row = {"model": name, "precision": precision, **_time_model(model, precision, feed, args)}
        rows.append(row)
        print(json.dumps({"model": name, "compile_s": row["compile_s"], **row["rounds"][-1]}), flush=True)
        _write(args, argv, rows)
    print(_write(args, argv, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
