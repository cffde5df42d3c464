"""Convergence of QAT with Teacher Intervention vs the KD-QAT baseline at equal budgets.

Reproduces the measurement behind the TI paper's claim (Kim et al., EACL 2023:
about 12.5x faster convergence of ternary QAT on CoLA) on the built-in
setting: a full-precision model is trained (``--task digits``: a tiny-vit on
scikit-learn's digits; ``wordnet-minilm``: the pretrained all-MiniLM-L6-v2
fine-tuned on the 45 WordNet supersenses; ``fashion-resnet``: ResNet-18 on
Fashion-MNIST, which has no attention, so only ``block_input``, our
extension, applies), then each method quantizes a copy of it for the same
number N of optimizer steps:

* ``kd_qat``: TernaryBERT-style KD-QAT, the TI loss (soft CE on logits +
  hidden-state + attention-score + attention-output MSE), no intervention;
* ``ti_o``, ``ti_m``, ``ti_g``: ``s`` steps with output / map / gradual
  intervention, then ``N - s`` steps of the same KD-QAT with a fresh optimizer.

at W2(ternary)A8, W4A8 and W8A8 (patch embedding and classifier kept at 8-bit
weights in all three), several seeds. Everything runs through the library
(``compress.quant.train_with_intervention``), the same code as the ``qat``
stage. Reported: validation accuracy every ``k`` steps (mean over seeds), the
first step at which each method's mean curve reaches the baseline's final
mean accuracy, final val/test accuracies (mean ± std) and the per-layer MSE to
the FP model's hidden states after training (index 0 = embedding output).

Usage::

    python benchmarks/ti_convergence.py --quick --out /tmp/ti-quick          # CPU, a few minutes
    python benchmarks/ti_convergence.py --device cuda --steps 800 --out DIR    # full setting
    python benchmarks/ti_convergence.py --task wordnet-minilm --device cuda --precisions w2a8 --out DIR

Writes ``results.json``, ``results.md`` and (with matplotlib) ``ti_convergence.png``
to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from compress._utils.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_json,
)
from compress.data import SOURCES, TaskData
from compress.data.base import stratified_split
from compress.models import build_model
from compress.quant import (
    QuantConfig,
    TeacherInterventionConfig,
    block_output_mse,
    calibrate_,
    prepare_qat,
    train_with_intervention,
)
from compress.train import TrainConfig, evaluate, fit
from compress.train.loop import steps_per_epoch

ENDS: dict[str, list[str]] = {
    # the layers kept at 8-bit weights in every precision (first and last, as TernaryBERT keeps the classifier)
    "digits": ["patch_embed", "head"],
    "wordnet-minilm": ["*pooler*", "*classifier*"],
    "fashion-resnet": ["net.conv1", "net.fc"],
}


def precisions(task: str) -> dict[str, dict[str, Any]]:
    """The three weight precisions, with the task's first/last layers kept at 8 bits."""
    ends = [{"pattern": p, "weights": {"bits": 8}} for p in ENDS[task]]
    return {
        "w2a8": {"weights": {"scheme": "twn"}, "activations": {"bits": 8}, "overrides": ends},
        "w4a8": {"weights": {"bits": 4}, "activations": {"bits": 8}, "overrides": ends},
        "w8a8": {"weights": {"bits": 8}, "activations": {"bits": 8}, "overrides": ends},
    }


PRECISIONS = precisions("digits")

METHODS: dict[str, str] = {
    "kd_qat": "none",
    "ti_o": "output",
    "ti_m": "map",
    "ti_g": "gradual",
    "ti_block": "block_input",
}
DEFAULT_METHODS = ["kd_qat", "ti_o", "ti_m", "ti_g"]
NEAR = 0.005  # the "within" reach: half a point of accuracy below the baseline's final
BASELINE = "kd_qat"


def _device_name(device: str) -> str:
    """The GPU's name on CUDA, else the processor's."""
    import platform

    return torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or "cpu")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--task",
        choices=["digits", "wordnet-minilm", "fashion-resnet"],
        default="digits",
        help="Model and data.",
    )
    p.add_argument(
        "--data-root", default=None, help="Data files folder of the real tasks (default: Debian's)."
    )
    p.add_argument(
        "--real-teacher-epochs", type=int, default=None, help="Fine-tuning epochs of a real teacher."
    )
    p.add_argument(
        "--summarise-only", action="store_true", help="Only summarise the runs kept in --out/results."
    )
    p.add_argument(
        "--runs-on",
        default=None,
        help="With --summarise-only: where the kept runs ran, for the table's header (older run files\n"
        "do not record their device; newer ones do).",
    )
    p.add_argument(
        "--work", type=Path, default=None, help="Pipeline run folder of a real teacher (default --out/work)."
    )
    p.add_argument("--quant-batches", type=int, default=4, help="Calibration batches (default 4).")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Where to train (default cpu).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="QAT seeds (default 0 1 2).")
    p.add_argument("--steps", type=int, default=None, help="QAT budget N in optimizer steps (default 400).")
    p.add_argument("--step1", type=int, default=None, help="TI step-1 length s (default N/8).")
    p.add_argument("--eval-every", type=int, default=None, help="Evaluate every k steps (default N/20).")
    p.add_argument("--batch-size", type=int, default=32, help="QAT batch size (default 32).")
    p.add_argument("--lr", type=float, default=5e-4, help="QAT peak learning rate (default 5e-4).")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=None,
        help="Default: KD-QAT and TI-O/M/G (fashion-resnet: KD-QAT and block_input).",
    )
    p.add_argument("--teacher-epochs", type=int, default=20, help="FP teacher training epochs (default 20).")
    p.add_argument("--depth", type=int, default=4, help="Teacher blocks (default 4).")
    p.add_argument("--dim", type=int, default=64, help="Teacher width (default 64; 4 heads, MLP 2x).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    p.add_argument(
        "--quick",
        action="store_true",
        help="Reduced CPU setting: N=160, seeds 0 1, k=10 (explicit flags win).",
    )
    p.add_argument("--out", type=Path, required=True, help="Output folder (results.json, results.md, PNG).")
    a = p.parse_args(argv)
    seeds_given = any(x == "--seeds" for x in (sys.argv[1:] if argv is None else argv))
    if a.quick:
        a.steps = a.steps or 160
        a.seeds = a.seeds if seeds_given else a.seeds[:2]
        a.eval_every = a.eval_every or 10
    if a.methods is None:
        a.methods = ["kd_qat", "ti_block"] if a.task == "fashion-resnet" else list(DEFAULT_METHODS)
    if a.quick and a.task != "digits":
        a.steps = a.steps or 40
        a.eval_every = a.eval_every or 10
    a.steps = a.steps or 400
    a.step1 = a.step1 if a.step1 is not None else max(1, round(a.steps / 8))
    a.eval_every = a.eval_every or max(1, a.steps // 20)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    return a


def _real_task(args: argparse.Namespace) -> tuple[torch.nn.Module, TaskData]:
    """Fine-tune the real teacher with the pipeline runner (as ``distill_real.py``), then load it and the data."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import distill_real  # noqa: PLC0415 -- the sibling benchmark's task definitions and runner

    from compress.models import load_model

    spec = copy.deepcopy(distill_real.TASKS[args.task])
    data_cfg = dict(spec["data"])
    if args.data_root:
        data_cfg["root"] = args.data_root
    teacher_train = dict(spec["teacher_train"])
    if args.real_teacher_epochs:
        teacher_train["epochs"] = args.real_teacher_epochs
    if args.quick:
        data_cfg["subset"] = 900
        data_cfg["batch_size"] = 32
        teacher_train["epochs"] = 1
        if "max_length" in data_cfg:
            data_cfg["max_length"] = 24
    work = args.work or args.out / "work"
    _, _, teacher_file = distill_real.finetune_teacher(args.task, spec, data_cfg, teacher_train, work)
    teacher = load_model(teacher_file)
    data = distill_real.run_data(work)  # the same split the teacher was fine-tuned on
    return teacher.to(args.device).eval(), data


def _data(device: str) -> TaskData:
    data = SOURCES.get("digits")()
    data.splits = stratified_split(data.labels.numpy(), val_fraction=0.15, test_fraction=0.15, seed=0)
    data.inputs, data.labels = data.inputs.to(device), data.labels.to(device)
    return data


def _teacher(data: TaskData, args: argparse.Namespace) -> torch.nn.Module:
    """A tiny-vit (default 4 blocks, 64 wide) trained with CE (cached in ``--out``)."""
    spec = {"dim": args.dim, "depth": args.depth, "num_heads": 4, "mlp_dim": 2 * args.dim}
    train = TrainConfig(epochs=args.teacher_epochs, lr=3e-3, batch_size=64)
    path = args.out / f"teacher-{sha256_json({'spec': spec, 'train': train.model_dump()})[:12]}.pt"
    torch.manual_seed(0)
    model = build_model("tiny-vit", spec).to(args.device)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))
    else:
        ce = lambda m, x, y: (torch.nn.functional.cross_entropy(m(x), y), {})  # noqa: E731
        fit(model, ce, data, train, batch_size=64, seed=0)
        atomic_torch_save(model.state_dict(), path)
    return model.eval()


def _one_run(
    teacher: torch.nn.Module, data: TaskData, precision: str, method: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(seed)
    student = prepare_qat(
        copy.deepcopy(teacher), QuantConfig.model_validate(precisions(args.task)[precision])
    )
    calib = [
        x.to(args.device)
        for _, (x, _) in zip(
            range(args.quant_batches), data.batches("train", 64, shuffle=True, seed=seed), strict=False
        )
    ]
    calibrate_(student, lambda m: [m(x) for x in calib])
    acc0 = evaluate(student, data, "val")["accuracy"]
    mode = METHODS[method]
    ti = TeacherInterventionConfig(
        mode=mode,  # type: ignore[arg-type]
        steps=None if mode == "none" else args.step1,
        eval_every_steps=args.eval_every,
    )
    spe = steps_per_epoch(data, TrainConfig(batch_size=args.batch_size), batch_size=args.batch_size)
    train = TrainConfig(
        epochs=math.ceil(args.steps / spe),
        lr=args.lr,
        batch_size=args.batch_size,
        schedule="linear",
        warmup_fraction=0.1,
    )
    t0 = time.perf_counter()
    res = train_with_intervention(
        student,
        teacher,
        data,
        train,
        ti,
        batch_size=args.batch_size,
        seed=seed,
        eval_fn=lambda m: {"accuracy": evaluate(m, data, "val", batch_size=1024)["accuracy"]},
        total_steps=args.steps,
    )
    seconds = time.perf_counter() - t0
    student.eval()
    x_val = data.tensors("val")[0][:512].to(args.device)
    student.to(args.device)
    teacher.to(args.device)
    layer_mse = block_output_mse(student, teacher, x_val)
    return {
        "precision": precision,
        "method": method,
        "seed": seed,
        "curve": [(0, acc0)] + [(int(r["step"]), float(r["val_accuracy"])) for r in res.step_evals],
        "final_val": evaluate(student, data, "val", batch_size=1024)["accuracy"],
        "final_test": evaluate(student, data, "test", batch_size=1024)["accuracy"],
        "layer_mse": layer_mse,
        "schedule": res.metrics()["ti_schedule"],
        "seconds": round(seconds, 2),
    }


def _mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _speedup(base: int | None, step: int | None) -> float | None:
    """``base / step``; 1.0 when both are reached at step 0 (calibration alone); ``None`` if undefined."""
    if base is None or step is None:
        return None
    if step == 0:
        return 1.0 if base == 0 else None
    return base / step


def _summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prec in args.precisions:
        rows = {}
        for method in args.methods:
            rs = [r for r in runs if r["precision"] == prec and r["method"] == method]
            if not rs:  # summarising kept runs: a method with no finished run at this precision is left out
                continue
            steps = [s for s, _ in rs[0]["curve"]]
            mean_curve = [statistics.fmean(r["curve"][i][1] for r in rs) for i in range(len(steps))]
            layers = len(rs[0]["layer_mse"])
            rows[method] = {
                "seeds": sorted(r["seed"] for r in rs),
                "steps": steps,
                "mean_curve": mean_curve,
                "final_val": _mean_std([r["final_val"] for r in rs]),
                "final_test": _mean_std([r["final_test"] for r in rs]),
                "layer_mse": [statistics.fmean(r["layer_mse"][i] for r in rs) for i in range(layers)],
                "seconds": statistics.fmean(r["seconds"] for r in rs),
            }
        if BASELINE in rows:
            target = rows[BASELINE]["final_val"][0]
            for row in rows.values():
                pairs = list(zip(row["steps"], row["mean_curve"], strict=True))
                row["reach_step"] = next((s for s, a in pairs if a >= target), None)
                # on a flat, noisy plateau the exact final value is reached late by chance; the step at
                # which a curve comes within NEAR of it measures how fast each method gets there
                row["near_step"] = next((s for s, a in pairs if a >= target - NEAR), None)
            base_reach, base_near = rows[BASELINE]["reach_step"], rows[BASELINE]["near_step"]
            for row in rows.values():
                row["speedup"] = _speedup(base_reach, row["reach_step"])
                row["near_speedup"] = _speedup(base_near, row["near_step"])
            out[prec] = {"baseline_final_val": target, "methods": rows}
        else:
            out[prec] = {"baseline_final_val": None, "methods": rows}
    return out


def _markdown(summary: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    lines = [
        f"# Teacher Intervention convergence: {_title(args)}",
        "",
        f"Command: `{command}`",
        "",
        f"N = {args.steps} optimizer steps per method (batch {args.batch_size}, lr {args.lr}, linear decay, "
        f"warm-up 0.1 per step), TI step 1 s = {args.step1}, eval every {args.eval_every} steps on val "
        f"({args.val_size} examples), seeds {args.seeds}"
        f"{'' if args.summarise_only else f', device {args.device}'}. 'reach' = first eval step at which the "
        "mean-over-seeds val curve reaches the KD-QAT baseline's final mean val accuracy; "
        f"speed-up = baseline reach / method reach. 'within {NEAR * 100:g} pt' = the same for the first "
        f"step within {NEAR * 100:g} points of that accuracy (robust to the plateau's eval noise).",
        "",
        "| precision | method | seeds | final val acc | final test acc | reach step | speed-up | "
        f"within {NEAR * 100:g} pt: step | speed-up | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for prec, block in summary.items():
        for method, row in block["methods"].items():
            fv, ft = row["final_val"], row["final_test"]
            reach = row.get("reach_step")
            sp = row.get("speedup")
            near, nsp = row.get("near_step"), row.get("near_speedup")
            seeds = " ".join(map(str, row["seeds"]))
            lines.append(
                f"| {prec} | {method} | {seeds} | {fv[0]:.4f} ± {fv[1]:.4f} | {ft[0]:.4f} ± {ft[1]:.4f} | "
                f"{reach if reach is not None else 'not reached'} | {f'{sp:.2f}x' if sp else '-'} | "
                f"{near if near is not None else 'not reached'} | {f'{nsp:.2f}x' if nsp else '-'} | "
                f"{row['seconds']:.1f} |"
            )
    lines += [
        "",
        "Per-layer MSE to the FP model's hidden states after training (val; h0 = embedding output):",
        "",
    ]
    n_layers = len(next(iter(next(iter(summary.values()))["methods"].values()))["layer_mse"])
    lines.append("| precision | method | " + " | ".join(f"h{i}" for i in range(n_layers)) + " |")
    lines.append("|---|---|" + "---|" * n_layers)
    for prec, block in summary.items():
        for method, row in block["methods"].items():
            lines.append(f"| {prec} | {method} | " + " | ".join(f"{v:.4f}" for v in row["layer_mse"]) + " |")
    lines += ["", "Mean val accuracy against optimizer steps:", ""]
    for prec, block in summary.items():
        methods = block["methods"]
        steps = next(iter(methods.values()))["steps"]
        lines.append(f"{prec}: | step | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for i, s in enumerate(steps):
            lines.append(
                f"| {s} | " + " | ".join(f"{m['mean_curve'][i]:.3f}" for m in methods.values()) + " |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _title(args: argparse.Namespace) -> str:
    return {
        "digits": f"tiny-vit ({args.depth}x{args.dim}) on digits",
        "wordnet-minilm": "all-MiniLM-L6-v2 (6 layers, fine-tuned) on WordNet supersenses (45 classes)",
        "fashion-resnet": "ResNet-18 (3x3 stem) on Fashion-MNIST (block-input intervention, our extension)",
    }[args.task]


def _plot(summary: dict[str, Any], args: argparse.Namespace) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
    for ax, (prec, block) in zip(axes[0], summary.items(), strict=True):
        for method, row in block["methods"].items():
            ax.plot(row["steps"], row["mean_curve"], label=method, marker="." if method != BASELINE else None)
        if block["baseline_final_val"] is not None:
            ax.axhline(block["baseline_final_val"], color="gray", ls="--", lw=0.8, label="KD-QAT final")
        ax.axvline(args.step1, color="gray", ls=":", lw=0.8)
        ax.set_title(f"{prec} (s = {args.step1}, N = {args.steps})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("val accuracy (mean over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/ti_convergence.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.perf_counter()
    if args.summarise_only:
        data, teacher, fp = None, None, json.loads((args.out / "fp.json").read_text())
    elif args.task == "digits":
        data = _data(args.device)
        teacher = _teacher(data, args)
    else:
        teacher, data = _real_task(args)
    if not args.summarise_only:
        fp = {s: evaluate(teacher, data, s, batch_size=1024)["accuracy"] for s in ("val", "test")}
        fp["val_size"] = len(data.splits["val"])
        atomic_write_json(args.out / "fp.json", fp)
    args.val_size = fp["val_size"]
    print(
        f"FP teacher: val {fp['val']:.4f}, test {fp['test']:.4f} ({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    runs = []
    # every finished run is kept in <out>/results/ (keyed by its settings), so a long benchmark can be
    # split over several invocations (e.g. one seed per device call) and the last one summarises all
    setting = {
        k: str(getattr(args, k))
        for k in (
            "task",
            "steps",
            "step1",
            "eval_every",
            "batch_size",
            "lr",
            "teacher_epochs",
            "real_teacher_epochs",
            "quant_batches",
            "depth",
            "dim",
        )
    }
    for prec in args.precisions:
        for seed in args.seeds:
            for method in args.methods:
                key = sha256_json({**setting, "precision": prec, "method": method, "seed": seed})[:12]
                cached = args.out / "results" / f"{prec}-{method}-seed{seed}-{key}.json"
                if cached.is_file():
                    runs.append(json.loads(cached.read_text()))
                    continue
                if args.summarise_only:
                    print(f"{prec} {method} seed {seed}: no finished run; left out", file=sys.stderr)
                    continue
                r = _one_run(teacher, data, prec, method, seed, args)
                r["device"] = _device_name(args.device)
                atomic_write_json(cached, r)
                runs.append(r)
                print(
                    f"{prec} {method:7s} seed {seed}: val {r['final_val']:.4f} test {r['final_test']:.4f} "
                    f"({r['seconds']:.1f} s)",
                    file=sys.stderr,
                )
    summary = _summarise(runs, args)
    md = _markdown(summary, args, command)
    md = md.replace("\n\n", f"\n\nFP teacher: val {fp['val']:.4f}, test {fp['test']:.4f}.\n\n", 1)
    png = _plot(summary, args)
    md += "\nPlot: ti_convergence.png\n" if png else "\nPlot: skipped (matplotlib is not installed).\n"
    device = _device_name(args.device)
    if args.summarise_only:
        recorded = sorted({r["device"] for r in runs if "device" in r})
        runs_on = args.runs_on or (", ".join(recorded) if recorded else "not recorded in the run files")
        header = f"Runs: {runs_on}. This table was summarised on {device} from the kept run files."
    else:
        header = f"Device: {device}, torch {torch.__version__}."
    md = md.replace("\n\n", f"\n\n{header}\n\n", 1)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": device,
        "fp": fp,
        "runs": runs,
        "summary": summary,
    }
    atomic_write_json(args.out / "results.json", report)
    atomic_write_text(args.out / "results.md", md)
    if png:
        atomic_write_bytes(args.out / "ti_convergence.png", png)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
