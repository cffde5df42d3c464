"""Is a recipe within its accuracy budget across splits, or only in one run? A table over several runs.

One run's accuracy drop carries test-set noise (its 95 % interval, ``compress.report.confidence``). Running
the same pipeline with several seeds (each seed draws its own split, so its own teacher and test set) shows
the recipe's spread. This script reads the runs' manifests and prints, per validate target and release
artifact: each run's drop with its 95 % interval, agreement and speed-up, then the mean drop over runs, its
standard deviation, the 95 % t interval of the mean (what the recipe loses on average) and the 95 %
prediction interval for one more run (what the next run may lose), and how many runs met the budget.

    python benchmarks/seed_summary.py RUN_DIR_OR_MANIFEST... [--out docs/results/.../seeds.md]

Speed-ups are p95 against the teacher's in the same validate run; a run timed while other processes held
the GPU (``gpu_use``) is marked "not clean".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from compress.report.confidence import PairedCounts


@dataclass(frozen=True)
class Row:
    """One run's release artifact on one target."""

    run: str
    seed: int | None
    target: str
    artifact: str
    teacher_accuracy: float
    accuracy: float
    paired: PairedCounts | None
    agreement: float | None
    speedup: float | None
    clean: bool
    max_drop: float | None


def _manifest_path(arg: str) -> Path:
    p = Path(arg)
    p = p / "manifest.json" if p.is_dir() else p
    if not p.is_file():
        raise SystemExit(f"seed_summary: {arg}: no manifest.json there")
    return p


def _accuracy_budgets(manifest: dict[str, Any]) -> dict[str, float]:
    """The absolute ``max_drop`` of each target's accuracy gate (relative budgets are left out)."""
    out = {}
    for g in manifest.get("gates") or []:
        name, budget = str(g.get("name", "")), g.get("budget")
        if name.startswith("accuracy[") and isinstance(budget, dict) and not budget.get("relative"):
            out[name[len("accuracy[") : -1]] = float(budget["max_drop"])
    return out


def rows_of(run: str | Path) -> list[Row]:
    """Every validated target's release artifact in one run (its directory or its manifest.json)."""
    path = _manifest_path(str(run))
    m = json.loads(path.read_text())
    validate = [s for s in m.get("stages", []) if s.get("kind") == "validate"]
    if not validate:
        raise SystemExit(f"seed_summary: {path}: the run has no validate stage")
    budgets = _accuracy_budgets(m)
    rows = []
    for name, target in validate[-1]["metrics"]["targets"].items():
        if not target.get("ran"):
            continue
        models, release = target["models"], target.get("release_artifact")
        if release not in models or "teacher" not in models:
            continue
        art, teacher = models[release], models["teacher"]
        speedup = None
        for batch, lat in sorted(art.get("latency", {}).items(), key=lambda kv: int(kv[0])):
            t_lat = teacher.get("latency", {}).get(batch)
            if t_lat and lat.get("p95_ms"):
                speedup = t_lat["p95_ms"] / lat["p95_ms"]  # the largest batch measured
        rows.append(
            Row(
                run=str(path.parent),
                seed=m.get("seed"),
                target=name,
                artifact=release,
                teacher_accuracy=teacher["accuracy"],
                accuracy=art["accuracy"],
                paired=PairedCounts.from_dict(art.get("paired")),
                agreement=art.get("agreement"),
                speedup=speedup,
                clean=not (target.get("gpu_use") or {}).get("others"),
                max_drop=budgets.get(name),
            )
        )
    return rows


def _drop(r: Row) -> float:
    return r.paired.drop if r.paired else r.teacher_accuracy - r.accuracy


def summarize(rows: list[Row]) -> dict[str, Any]:
    """Per (target, artifact): the runs and the statistics of their drops, in points."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.target, r.artifact), []).append(r)
    out: dict[str, Any] = {}
    for (target, artifact), rs in groups.items():
        drops = [100 * _drop(r) for r in rs]
        n = len(drops)
        mean = statistics.fmean(drops)
        stats: dict[str, Any] = {"runs": n, "mean_drop": mean, "min_drop": min(drops), "max_drop": max(drops)}
        if n >= 2:
            sd = statistics.stdev(drops)
            q = float(student_t.ppf(0.975, n - 1))
            stats |= {
                "sd": sd,
                "mean_interval": (mean - q * sd / math.sqrt(n), mean + q * sd / math.sqrt(n)),
                "next_run_interval": (
                    mean - q * sd * math.sqrt(1 + 1 / n),
                    mean + q * sd * math.sqrt(1 + 1 / n),
                ),
            }
        budget = rs[0].max_drop
        if budget is not None:
            stats["budget"] = 100 * budget
            stats["within_budget"] = sum(d <= 100 * budget for d in drops)
        agreements = [r.agreement for r in rs if r.agreement is not None]
        if agreements:
            stats["agreement_mean"], stats["agreement_min"] = statistics.fmean(agreements), min(agreements)
        out[f"{target} / {artifact}"] = {
            "stats": stats,
            "runs": [
                {
                    "seed": r.seed,
                    "run": r.run,
                    "teacher_accuracy": r.teacher_accuracy,
                    "accuracy": r.accuracy,
                    "drop": d,
                    "interval": [100 * x for x in r.paired.interval(0.95)] if r.paired else None,
                    "agreement": r.agreement,
                    "speedup": r.speedup,
                    "clean": r.clean,
                }
                for r, d in zip(rs, drops, strict=True)
            ],
        }
    return out


def render(summary: dict[str, Any], command: str) -> str:
    lines = ["# Accuracy drop over runs", "", "```", command, "```", ""]
    for key, g in summary.items():
        s = g["stats"]
        lines += [
            f"## {key}",
            "",
            "| seed | teacher | artifact | drop (95 % interval) | agreement | p95 speed-up |",
        ]
        lines += ["|---|---|---|---|---|---|"]
        for r in g["runs"]:
            iv = f" ({r['interval'][0]:.2f} to {r['interval'][1]:.2f})" if r["interval"] else ""
            if "budget" in s and r["drop"] > s["budget"]:
                iv += f", over the budget ({r['drop']:.3f})"
            agr = f"{r['agreement']:.4f}" if r["agreement"] is not None else "n/a"
            sp = (
                "n/a"
                if r["speedup"] is None
                else f"{r['speedup']:.2f}x" + ("" if r["clean"] else " (not clean)")
            )
            acc = f"{r['teacher_accuracy']:.4f} | {r['accuracy']:.4f}"
            lines.append(f"| {r['seed']} | {acc} | {r['drop']:.2f}{iv} | {agr} | {sp} |")
        lines.append("")
        lines.append(
            f"- {s['runs']} runs: mean drop **{s['mean_drop']:.2f}** points (min {s['min_drop']:.2f}, "
            f"max {s['max_drop']:.2f})" + (f", sd {s['sd']:.2f}" if "sd" in s else "") + "."
        )
        if "mean_interval" in s:
            lo, hi = s["mean_interval"]
            nlo, nhi = s["next_run_interval"]
            lines.append(f"- 95 % t interval of the mean drop: {lo:.2f} to {hi:.2f} points.")
            lines.append(f"- 95 % prediction interval for one more run: {nlo:.2f} to {nhi:.2f} points.")
        if "budget" in s:
            lines.append(
                f"- Within the {s['budget']:g}-point budget: {s['within_budget']} of {s['runs']} runs."
            )
        if "agreement_mean" in s:
            lines.append(f"- Agreement: mean {s['agreement_mean']:.4f}, lowest {s['agreement_min']:.4f}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or their manifest.json files")
    ap.add_argument(
        "--out", type=Path, help="also write the table here (.md) and the numbers beside it (.json)"
    )
    args = ap.parse_args(argv)
    rows = [r for a in args.runs for r in rows_of(a)]
    command = (
        "python benchmarks/seed_summary.py "
        + " ".join(args.runs)
        + (f" --out {args.out}" if args.out else "")
    )
    summary = summarize(rows)
    text = render(summary, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
