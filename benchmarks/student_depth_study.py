"""Which distill + prune recipe keeps a 2-layer MiniLM student within 1 point of its teacher (issue 8).

At batch 32 x 128 tokens the H100 rewards depth, not width: a pruned 3-layer student's own GPU time
allows about 14x the FP32 teacher, a 2-layer one about 20x (docs/results/latency-floor-h100). Session 11's
2-layer pipeline (teacher layers 2 and 5, KD 6 epochs, prune 50 % with recovery from the unpruned student)
lost 1.8 points. This script fine-tunes the teacher once with compress's own pipeline runner, then runs
every variant below as a ``distill -> prune`` pipeline against that checkpoint, all at once as separate
processes (one GPU holds them: small models leave it mostly idle), and writes a table of the distilled
and pruned students' test accuracy against the teacher's.

Variants (all prune to half the MACs except G and I-L; taylor importance, 3 steps except L, round_to 8;
recovery by KD from the 6-layer teacher except A):

  A  layers 2, 5; KD 6 epochs; recover 2 epochs a step from the unpruned student (session 11's recipe)
  B  layers 2, 5; KD 10 epochs; recover 2 epochs a step
  C  layers 2, 5; KD 10 epochs; recover 3 epochs a step
  D  layers 2, 5; KD + hidden states 10 epochs; recover 3
  E  layers 0, 2, 4 (3 layers); KD 6 epochs; prune drops the least important layer, then to 2/3 of the MACs
  F  layers 1, 5; KD 10 epochs; recover 3
  G  layers 2, 5; KD 10 epochs; prune 40 % only; recover 3
  H  layers 1, 5; KD + hidden states 10 epochs; recover 3: the l2 pipeline's recipe in sessions 12-13
  I  as H, but only layer 0 is pruned (``ignored_layers``: the last layer), to 29 % of the MACs. Under the
     torch-compile runtime's first-token rewrite the last layer's FFN and output projection cost almost
     nothing, so this spends no accuracy on work the runtime skips; at 128 tokens it executes about the
     MACs of H (153M against 142M, counted on magnitude-pruned copies), with the last layer whole
  J  as I with longer training: KD + hidden states 16 epochs, recovery 4 epochs a step: the recipe of
     pipelines/wordnet-minilm-gpu-l2.yaml in session 14, N since session 15
     (docs/results/distill-h100/l2-study-seeds)
  K  as J, plus MiniLMv2's Q-Q/K-K/V-V relations between the last layers (teacher 6, student 2) in the
     distillation (session 15: worse than J)
  L  as J, but pruned in 6 steps of 2 recovery epochs instead of 3 of 4 (the same 12 epochs; session 15:
     J within noise)
  M  as J, but each student layer's hidden state is matched to the teacher layer it was copied from
     (student 1, 2 <- teacher 2, 6; 1-based) instead of the uniform map (teacher 3, 6) (session 15: J
     within noise)
  N  as J, but in half of the examples of each distillation and recovery batch every content token
     becomes [MASK] with probability 0.15, teacher and student seeing the same masked text
     (TinyBERT-style KD on perturbed inputs, ``augment: {examples: 0.5, mask: 0.15}``;
     docs/distillation.md). Not run in this study: it ran as pipelines/wordnet-minilm-gpu-l2.yaml itself,
     seeds 0-2 (docs/results/pipelines-h100/README.md, session 15)

Seeds. Session 13 found the drop of one recipe spread over 0.5 points across seeds (0.79-1.29,
docs/results/pipelines-h100/README.md), larger than most differences between the variants above, which
each ran once. ``--seeds 0 1 2`` runs every variant once per training seed on the teacher's split
(``data.split_seed: 0``) and reports each seed's drop and their mean.

  python benchmarks/student_depth_study.py --out docs/results/distill-h100/l2-study --work /tmp/st
  python benchmarks/student_depth_study.py --only H I J --seeds 0 1 2 --out /tmp/r5/study --work /tmp/st
CPU smoke test (900 examples, one epoch, variants A and F; numbers meaningless):
  python benchmarks/student_depth_study.py --quick --only A F --out /tmp/sds --work /tmp/sds/runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts

from distill_real import TASKS, finetune_teacher  # noqa: E402

TASK = TASKS["wordnet-minilm"]  # teacher, data and teacher training of distill_real's WordNet task
KD = {"kd": {"temperature": 2, "weight": 0.9}, "ce": {"weight": 0.1}}
AUGMENT = {"examples": 0.5, "mask": 0.15}  # variant N: KD on masked inputs


def distill(
    epochs: int, losses: dict[str, Any] = KD, augment: dict[str, float] | None = None
) -> dict[str, Any]:
    d: dict[str, Any] = {"train": {"epochs": epochs, "lr": 0.0002, "precision": "bf16"}, "losses": losses}
    if augment is not None:
        d["augment"] = augment
    return {"distill": d}


def prune(
    macs: float,
    recover: int,
    teacher: str = "original",
    layers: int | None = None,
    ignored: list[str] | None = None,
    steps: int = 3,
    augment: dict[str, float] | None = None,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "target": {"macs": macs},
        "importance": "taylor",
        "iterative_steps": steps,
        "round_to": 8,
        "recover": {"epochs": recover, "train": {"lr": 0.0001, "precision": "bf16"}},
        "teacher": teacher,
    }
    if layers:
        p["layers"] = {"drop": layers}
    if ignored:
        p["ignored_layers"] = ignored
    if augment is not None:
        p["recover"]["augment"] = augment
    return {"prune": p}


VARIANTS: dict[str, tuple[list[int], list[dict[str, Any]]]] = {
    "A-l25-kd6-p50-r2prev": ([2, 5], [distill(6), prune(0.5, 2, "previous")]),
    "B-l25-kd10-p50-r2": ([2, 5], [distill(10), prune(0.5, 2)]),
    "C-l25-kd10-p50-r3": ([2, 5], [distill(10), prune(0.5, 3)]),
    "D-l25-kdhid10-p50-r3": ([2, 5], [distill(10, {**KD, "hidden": {"weight": 1.0}}), prune(0.5, 3)]),
    "E-l024-kd6-drop1-p667-r3": ([0, 2, 4], [distill(6), prune(0.667, 3, layers=1)]),
    "F-l15-kd10-p50-r3": ([1, 5], [distill(10), prune(0.5, 3)]),
    "G-l25-kd10-p40-r3": ([2, 5], [distill(10), prune(0.4, 3)]),
    "H-l15-kdhid10-p50-r3": ([1, 5], [distill(10, {**KD, "hidden": {"weight": 1.0}}), prune(0.5, 3)]),
    "I-l15-kdhid10-p29-layer0-r3": (
        [1, 5],
        [
            distill(10, {**KD, "hidden": {"weight": 1.0}}),
            prune(0.29, 3, ignored=["net.bert.encoder.layer.1.*"]),
        ],
    ),
    "J-l15-kdhid16-p29-layer0-r4": (
        [1, 5],
        [
            distill(16, {**KD, "hidden": {"weight": 1.0}}),
            prune(0.29, 4, ignored=["net.bert.encoder.layer.1.*"]),
        ],
    ),
    "K-l15-kdhidv2-16-p29-layer0-r4": (
        [1, 5],
        [
            distill(16, {**KD, "hidden": {"weight": 1.0}, "minilmv2": {"weight": 1.0}}),
            prune(0.29, 4, ignored=["net.bert.encoder.layer.1.*"]),
        ],
    ),
    "L-l15-kdhid16-p29-layer0-6x2": (
        [1, 5],
        [
            distill(16, {**KD, "hidden": {"weight": 1.0}}),
            prune(0.29, 2, ignored=["net.bert.encoder.layer.1.*"], steps=6),
        ],
    ),
    "M-l15-kdhidsrc16-p29-layer0-r4": (
        [1, 5],
        [
            distill(16, {**KD, "hidden": {"weight": 1.0, "layer_map": [[0, 0], [1, 2], [2, 6]]}}),
            prune(0.29, 4, ignored=["net.bert.encoder.layer.1.*"]),
        ],
    ),
    "N-l15-kdhid16aug-p29-layer0-r4": (
        [1, 5],
        [
            distill(16, {**KD, "hidden": {"weight": 1.0}}, augment=AUGMENT),
            prune(0.29, 4, ignored=["net.bert.encoder.layer.1.*"], augment=AUGMENT),
        ],
    ),
}


def _launch(doc: dict[str, Any], folder: Path) -> subprocess.Popen[bytes]:
    """Start ``compress run`` on ``doc`` in ``folder`` as its own process (log: folder/run.log)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    log = (folder / "run.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "compress",
        "run",
        str(folder / "pipeline.yaml"),
        "--run-dir",
        str(folder / "run"),
    ]
    return subprocess.Popen([*cmd, "--quiet"], stdout=log, stderr=subprocess.STDOUT)


def _quick(doc: dict[str, Any]) -> dict[str, Any]:
    """The same pipeline on 900 examples, one epoch per training (a smoke test)."""
    doc["data"] = _quick_data(doc["data"])
    for stage in doc["stages"]:
        cfg = next(iter(stage.values()))
        if "train" in cfg:
            cfg["train"]["epochs"] = 1
        if "recover" in cfg:
            cfg["recover"]["epochs"] = 1
    return doc


def _quick_data(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "subset": 900, "batch_size": 32, "max_length": 24}


def _runs(names: list[str], seeds: list[int] | None, work: Path) -> list[tuple[str, int | None, Path]]:
    """(variant, training seed or None, run folder) of each run: ``work/<variant>`` or one per seed in it."""
    if seeds is None:
        return [(n, None, work / n) for n in names]
    return [(n, s, work / n / f"seed{s}") for n in names for s in seeds]


def _summary(
    teacher: dict[str, Any], runs: list[tuple[str, int | None, Path]], out: Path, command: str
) -> str:
    rows = [
        f"# 2-layer student study\n\nCommand: `{command}`\n",
        f"Teacher (MiniLM-L6 fine-tuned 4 epochs): test {teacher['test_accuracy']:.4f}, "
        f"val {teacher['val_accuracy']:.4f}\n",
        "| variant | distilled test acc | pruned test acc | drop vs teacher (points) | pruned val acc "
        "| MACs / example | params | stage seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    record: dict[str, Any] = {"command": command, "teacher": teacher, "variants": {}}
    drops: dict[str, list[float]] = {}
    for name, seed, folder in runs:
        f = folder / "run/manifest.json"
        if not f.exists():
            continue
        stages = json.loads(f.read_text())["stages"]
        models = [s["metrics"]["model"] for s in stages]
        label = name if seed is None else f"{name}, seed {seed}"
        record["variants"][label] = {
            "stages": [s["metrics"] for s in stages],
            "seconds": [s["seconds"] for s in stages],
        }
        drop = 100 * (teacher["test_accuracy"] - models[-1]["test_accuracy"])
        drops.setdefault(name, []).append(drop)
        rows.append(
            f"| {label} | {models[0]['test_accuracy']:.4f} | {models[-1]['test_accuracy']:.4f} "
            f"| {drop:.2f} | "
            f"{models[-1]['val_accuracy']:.4f} | {models[-1]['macs']:,} | {models[-1]['params']:,} | "
            f"{sum(s['seconds'] for s in stages):.0f} |"
        )
    if any(seed is not None for _, seed, _ in runs):
        rows += ["", "| variant | seeds | mean drop (points) | min | max |", "|---|---|---|---|---|"]
        for name, values in drops.items():
            mean = sum(values) / len(values)
            rows.append(f"| {name} | {len(values)} | {mean:.2f} | {min(values):.2f} | {max(values):.2f} |")
        record["mean_drop"] = {n: sum(v) / len(v) for n, v in drops.items()}
    text = "\n".join(rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(record, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for summary.md / summary.json.")
    ap.add_argument("--work", type=Path, required=True, help="Folder for the runs (teacher and variants).")
    ap.add_argument("--only", nargs="+", default=None, help="Variant letters to run (default: all).")
    ap.add_argument("--data-root", default=None, help="WordNet folder (default: the Debian package's).")
    ap.add_argument("--quick", action="store_true", help="900 examples, one epoch (a smoke test).")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="Training seeds: each variant runs once per seed, on the teacher's split (data.split_seed 0).",
    )
    args = ap.parse_args(argv)
    command = "python benchmarks/student_depth_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = {**TASK["data"], **({"root": args.data_root} if args.data_root else {})}
    train = dict(TASK["teacher_train"])
    if args.quick:
        train["epochs"] = 1
    work = args.work
    t0 = time.perf_counter()
    # in-process, into work/run (a second call finds the stage cached); the checkpoint is work/teacher.pt
    teacher_data = _quick_data(data) if args.quick else data
    stage, _, teacher_file = finetune_teacher("wordnet-minilm", TASK, teacher_data, train, work)
    print(f"teacher done in {time.perf_counter() - t0:.0f} s", flush=True)
    names = [n for n in VARIANTS if not args.only or n[0] in args.only]
    runs = _runs(names, args.seeds, work)
    procs = {}
    for name, seed, folder in runs:
        keep, stages = VARIANTS[name]
        doc = {
            "name": f"study-{name}",
            "seed": 0 if seed is None else seed,
            "teacher": {**TASK["teacher"], "checkpoint": str(teacher_file)},
            "student": {"keep_layers": keep},
            # with --seeds, every run keeps the teacher's split (its fine-tuning ran with seed 0)
            "data": data if seed is None else {**data, "split_seed": 0},
            "stages": json.loads(json.dumps(stages)),
        }
        procs[folder] = _launch(_quick(doc) if args.quick else doc, folder)
    failed = 0
    for folder, proc in procs.items():
        rc = proc.wait()
        failed += rc != 0
        print(f"{folder.relative_to(work)}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
    print(_summary(stage["metrics"]["model"], runs, args.out, command))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
