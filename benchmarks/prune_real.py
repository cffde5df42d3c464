"""Structured-pruning benchmark on real teachers and data (issue 5): accuracy, size, MACs and latency.

For each task it fine-tunes the teacher once with ``compress``'s own pipeline runner (the same
recipe as ``benchmarks/distill_real.py``, whose task table it imports), then prunes that teacher to
30 %, 50 % and 70 % of its MACs removed, each a one-stage ``prune`` pipeline with KD recovery from
the unpruned teacher. Every model (the unpruned teacher included, in the same run and on the same
inputs) is exported to FP32 ONNX and timed with the bench harness on ONNX Runtime CPU (2 threads);
with ``--device cuda`` also in torch fp16 compiled (``torch-compile`` runtime) and ORT CUDA FP32.
It prints a markdown table (test accuracy, params, MACs, MAC ratio vs measured speed-up, p50/p95)
and writes it (markdown + JSON) to ``--out``. MAC ratios are not speed-ups: both are reported.

Tasks:
  fashion-resnet   ResNet-18 (1 channel, 3x3 stem) on Fashion-MNIST: channels (residual-coupled), round_to 8
  wordnet-minilm   all-MiniLM-L6-v2 fine-tuned on the 45 WordNet supersenses: heads and FFN neurons

Usage (GPU box, full data):
  python benchmarks/prune_real.py --task fashion-resnet --device cuda --out docs/results/prune-h100
  python benchmarks/prune_real.py --task wordnet-minilm --device cuda --out docs/results/prune-h100
Each model is timed in a fresh process (``--same-process`` to opt out): in one process, earlier
torch.compile runs slowed later ones. Training and timing can be split (``--no-latency`` first, e.g. while the GPU is shared; then the same
command without it reuses every finished run and times them on a quiet machine).
CPU smoke test (tiny subset, one epoch; numbers meaningless):
  python benchmarks/prune_real.py --task fashion-resnet --quick --out /tmp/prune-bench
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package

from distill_real import TASKS, _last_model_metrics, _run, finetune_teacher  # noqa: E402

RATIOS = (0.3, 0.5, 0.7)
PRUNE: dict[str, dict[str, Any]] = {
    "fashion-resnet": {
        "importance": "taylor",
        "round_to": 8,
        "iterative_steps": 2,
        "recover_epochs": 2,
        "lr": 1e-3,
        "input": ("image", (1, 28, 28)),
    },
    "wordnet-minilm": {
        "importance": "taylor",
        "round_to": 8,
        "iterative_steps": 2,
        "recover_epochs": 1,
        "lr": 1e-4,
        "input": ("tokens", None),
    },
}


def _inputs(task: str, data: dict[str, Any], batch: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    kind, shape = PRUNE[task]["input"]
    if kind == "image":
        return torch.randn(batch, *shape, generator=g)
    # Token ids without padding at the benchmark's sequence length (the compute does not depend on the ids).
    return torch.randint(1000, 2000, (batch, int(data.get("max_length", 64))), generator=g)


def _latency(
    model: Any,
    x: Any,
    *,
    runtime: str,
    device: str,
    threads: int | None,
    iterations: int,
    precision: str | None = None,
) -> dict[str, float]:
    """p50/p95 ms of ``model`` at ``x``'s batch size on one runtime (ONNX export for ORT)."""
    from compress.bench.latency import measure_latency
    from compress.export import export_onnx
    from compress.runtime import RUNTIMES, open_session

    rt = RUNTIMES.get(runtime)
    with tempfile.TemporaryDirectory() as tmp:
        source: Any = model
        if "torch" not in rt.formats:
            source = export_onnx(model.cpu().float().eval(), Path(tmp) / "m.onnx", x[:2])
        feed = x.numpy()
        with open_session(runtime, source, device=device, threads=threads, precision=precision) as sess:
            name = sess.inputs[0].name
            stats = measure_latency(
                sess,
                lambda b: {name: feed[:b]},
                batch_sizes=[len(feed)],
                warmup=max(5, iterations // 10),
                iterations=iterations,
            )
    s = stats[len(feed)]
    return {"p50_ms": s.p50_ms, "p95_ms": s.p95_ms}


# column: (runtime, device, threads, precision); the CUDA ones only with --device cuda
TIMINGS: dict[str, tuple[str, str, int | None, str | None]] = {
    "ort_cpu": ("onnxruntime", "cpu", 2, None),
    "torch_fp16_compiled": ("torch-compile", "cuda", None, "fp16"),
    "ort_cuda_fp32": ("onnxruntime", "cuda", None, None),
}


def _measure_here(model: Any, x: Any, device: str, iterations: int) -> dict[str, Any]:
    return {
        name: _latency(
            copy.deepcopy(model),
            x,
            runtime=rt,
            device=dev,
            threads=th,
            iterations=iterations,
            precision=p,
        )
        for name, (rt, dev, th, p) in TIMINGS.items()
        if dev == "cpu" or device == "cuda"
    }


def _measure(model: Any, x: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``model`` on every runtime, in a fresh (spawned) process unless ``--same-process``.

    Why a fresh process: timed one after another in one process, the H100's torch.compile column rose
    from model to model in the order they were timed (session 6: 0.428, 0.488, 0.529, 0.571 ms for
    ever smaller models), so state left by earlier compilations leaked into later timings.
    """
    if args.same_process:
        return _measure_here(model, x, args.device, args.iterations)
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_here, (model.cpu(), x, args.device, args.iterations))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(PRUNE), required=True)
    ap.add_argument("--out", type=Path, required=True, help="Folder for results (markdown + JSON).")
    ap.add_argument(
        "--work", type=Path, default=None, help="Folder for run directories (default: <out>/runs)."
    )
    ap.add_argument(
        "--quick", action="store_true", help="Tiny subset, one epoch (a smoke test, not a result)."
    )
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="Also time on the GPU with cuda."
    )
    ap.add_argument("--batch", type=int, default=32, help="Batch size timed.")
    ap.add_argument(
        "--no-latency",
        action="store_true",
        help="Train and prune only (no timing); a later run without it reuses every finished run and times.",
    )
    ap.add_argument("--iterations", type=int, default=200, help="Timed runs per model and runtime.")
    ap.add_argument(
        "--same-process",
        action="store_true",
        help="Time every model in this process (default: each model in a fresh spawned process).",
    )
    ap.add_argument("--importance", default=None, help="Override the task's importance criterion.")
    ap.add_argument(
        "--data-root", default=None, help="Folder of the data files (default: the Debian package's)."
    )
    args = ap.parse_args(argv)

    spec = copy.deepcopy(TASKS[args.task])
    pcfg = dict(PRUNE[args.task])
    data = dict(spec["data"])
    if args.data_root:
        data["root"] = args.data_root
    teacher_train = dict(spec["teacher_train"])
    recover_train = {k: v for k, v in spec["student_train"].items() if k != "epochs"} | {"lr": pcfg["lr"]}
    if args.device == "cpu":
        teacher_train["precision"] = recover_train["precision"] = "fp32"
    if args.quick:
        if "stem" in spec["teacher"]:
            # ImageNet stem (stride-2 conv + max-pool): 16x fewer MACs, so the smoke test fits in a minute.
            spec["teacher"]["stem"] = "imagenet"
        data["subset"] = 300 if args.task == "fashion-resnet" else 150
        data["batch_size"] = 32
        teacher_train["epochs"] = 1
        pcfg["recover_epochs"], pcfg["iterative_steps"] = 1, 1
        args.iterations, args.batch = min(args.iterations, 10), min(args.batch, 8)
        if "max_length" in data:
            data["max_length"] = 16
    if args.importance:
        pcfg["importance"] = args.importance
    work = args.work or args.out / "runs"
    rows: list[dict[str, Any]] = []
    from compress.models import build_model, load_model
    from compress.models.registry import load_checkpoint_file, load_state_dict_checked

    stage, wall, kept_teacher = finetune_teacher(args.task, spec, data, teacher_train, work)
    tm = stage["metrics"]["model"]
    tspec = {k: v for k, v in spec["teacher"].items() if k != "source"}
    teacher = build_model(spec["teacher"]["source"], tspec)
    load_state_dict_checked(teacher, load_checkpoint_file(kept_teacher), source=str(kept_teacher))
    x = _inputs(args.task, data, args.batch)
    t_lat = {} if args.no_latency else _measure(teacher.eval(), x, args)
    rows.append(
        {"model": "unpruned (fine-tuned)", "target": 0.0, **_row(tm), "latency": t_lat, "wall_s": wall}
    )
    _write(args, argv, data, pcfg, rows)

    for ratio in RATIOS:
        prune = {
            "target": {"macs": ratio},
            "importance": pcfg["importance"],
            "round_to": pcfg["round_to"],
            "iterative_steps": pcfg["iterative_steps"],
            "calibration_examples": 64 if args.quick else 512,
            "recover": {"epochs": pcfg["recover_epochs"], "train": recover_train},
        }
        doc = {
            "name": f"prune-{args.task}-{int(ratio * 100)}",
            "seed": 0,
            "teacher": {**spec["teacher"], "checkpoint": str(kept_teacher.resolve())},
            "data": data,
            "stages": [{"prune": prune}],
        }
        # one run folder per ratio, so a second invocation finds every pruned model cached
        manifest, wall = _run(doc, work / f"prune-{int(ratio * 100)}")
        st = manifest["stages"][-1]
        pm = _last_model_metrics(manifest)
        model = load_model(
            work / f"prune-{int(ratio * 100)}" / "run" / "stages" / st["id"] / "model.pt"
        ).eval()
        lat = {} if args.no_latency else _measure(model, x, args)
        rows.append(
            {
                "model": f"pruned {int(ratio * 100)} % MACs",
                "target": ratio,
                **_row(pm),
                "latency": lat,
                "macs_removed": st["metrics"]["macs_removed"],
                "blocks": st["metrics"]["blocks"],
                "wall_s": wall,
            }
        )
        p95 = f"{lat['ort_cpu']['p95_ms']:.2f} ms" if lat else "not timed"
        print(f"{ratio}: test {pm['test_accuracy']:.4f} p95 {p95} ({wall:.0f} s)", flush=True)
        _write(args, argv, data, pcfg, rows)
    print(_write(args, argv, data, pcfg, rows))
    return 0


def _row(m: dict[str, Any]) -> dict[str, Any]:
    return {"test_accuracy": m["test_accuracy"], "params": m["params"], "macs": m["macs"]}


def _write(
    args: argparse.Namespace,
    argv: list[str] | None,
    data: dict[str, Any],
    pcfg: dict[str, Any],
    rows: list[dict[str, Any]],
) -> str:
    """Write the table so far (markdown + JSON); called after every row, so a cut-off run keeps its rows."""
    import torch

    table = _table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/prune_real.py " + " ".join(sys.argv[1:] if argv is None else argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    note = " (QUICK: tiny subset, numbers meaningless)" if args.quick else ""
    (args.out / f"{args.task}.md").write_text(
        f"# Pruning benchmark: {args.task}{note}\n\nCommand: `{cmd}`\n\n"
        f"Device: {dev}, torch {torch.__version__}; "
        f"latency at batch {args.batch}, {args.iterations} timed runs\n\n"
        f"Prune settings: {pcfg}; data: {data}\n\n"
        f"{table}\n"
    )
    (args.out / f"{args.task}.json").write_text(
        json.dumps({"command": cmd, "device": dev, "batch": args.batch, "rows": rows}, indent=2)
    )
    return table


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0]["latency"]) if rows else []
    head = "| model | test acc | params | MACs/example | MAC ratio " + "".join(
        f"| {c} p50 / p95 ms | {c} speed-up (p50) " for c in cols
    )
    head += " |\n|" + "---|" * (5 + 2 * len(cols)) + "\n"
    base = rows[0]
    lines = []
    for r in rows:
        cells = [
            r["model"],
            f"{r['test_accuracy']:.4f}",
            f"{r['params']:,}",
            f"{r['macs']:,}",
            f"{base['macs'] / r['macs']:.2f}x",
        ]
        for c in cols:
            lat = r["latency"][c]
            cells += [
                f"{lat['p50_ms']:.3f} / {lat['p95_ms']:.3f}",
                f"{base['latency'][c]['p50_ms'] / lat['p50_ms']:.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
