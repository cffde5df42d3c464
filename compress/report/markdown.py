"""``report.md`` and ``metrics.json``: what a person reads and what a machine reads after a run.

``report.html`` (``compress.report.html``) holds the same tables plus plots.

``metrics.json`` schema (``schema: compress-metrics/1``, documented in docs/metrics.md):
``name``, ``verdict`` (pass|fail), ``wall_seconds``, ``teacher`` (params, macs,
val/test accuracy), ``stages`` (id, kind, status, seconds, model metrics),
``artifacts`` (path, format, precision, size_bytes, sha256), ``targets``
(validate measurements per target), ``gates`` (name, passed, measured, budget,
message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress._utils.io import atomic_write_json, atomic_write_text
from compress.report.confidence import PairedCounts
from compress.report.gates import collect_targets
from compress.report.junit import write_junit

METRICS_SCHEMA = "compress-metrics/1"


def build_metrics(manifest: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json document from a manifest."""
    return {
        "schema": METRICS_SCHEMA,
        "name": manifest.get("name"),
        "verdict": manifest.get("verdict"),
        "wall_seconds": manifest.get("wall_seconds"),
        "teacher": manifest.get("teacher", {}).get("final") or manifest.get("teacher", {}).get("initial"),
        "stages": [
            {
                "id": s["id"],
                "kind": s["kind"],
                "status": s["status"],
                "seconds": s["seconds"],
                "model": s["metrics"].get("model"),
            }
            for s in manifest.get("stages", [])
        ],
        "artifacts": manifest.get("artifacts", {}),
        "targets": collect_targets(manifest),
        "gates": manifest.get("gates", []),
    }


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_markdown(manifest: dict[str, Any]) -> str:
    """The human report: verdict, gates, stages, artifacts, per-target measurements."""
    m = build_metrics(manifest)
    verdict = (m["verdict"] or "unknown").upper()
    lines = [f"# compress report: {m['name']}", ""]
    gates = m["gates"]
    failed = [g for g in gates if not g["passed"]]
    if not gates:
        lines.append(f"**Verdict: {verdict}** (no gates configured)")
    else:
        lines.append(f"**Verdict: {verdict}**: {len(gates) - len(failed)} of {len(gates)} gates passed.")
    lines += ["", f"Wall time: {_fmt(m['wall_seconds'], '.1f')} s.", ""]
    if gates:
        lines += ["## Gates", "", "| gate | result | measured | budget | detail |", "|---|---|---|---|---|"]
        for g in gates:
            lines.append(
                f"| {g['name']} | {'PASS' if g['passed'] else 'FAIL'} | {_fmt(g['measured'])} | {_fmt(g['budget'])} | {g['message']} |"
            )
        lines.append("")
    t = m["teacher"] or {}
    lines += [
        "## Stages",
        "",
        "| stage | status | time (s) | val acc | test acc | params | MACs / example |",
        "|---|---|---|---|---|---|---|",
        f"| teacher | – | – | {_fmt(t.get('val_accuracy'))} | {_fmt(t.get('test_accuracy'))} | {_fmt(t.get('params'))} | {_fmt(t.get('macs'))} |",
    ]
    for s in m["stages"]:
        mm = s["model"] or {}
        lines.append(
            f"| {s['id']} | {s['status']} | {_fmt(s['seconds'], '.1f')} | {_fmt(mm.get('val_accuracy'))} | "
            f"{_fmt(mm.get('test_accuracy'))} | {_fmt(mm.get('params'))} | {_fmt(mm.get('macs'))} |"
        )
    lines.append("")
    if m["artifacts"]:
        lines += ["## Artifacts", "", "| artifact | file | precision | size (MB) | sha256 |", "|---|---|---|---|---|"]
        for name, a in m["artifacts"].items():
            lines.append(
                f"| {name} | {a['path']} | {a['precision']} | {a['size_bytes'] / 1e6:.4f} | `{a['sha256'][:12]}` |"
            )
        lines.append("")
    for tname, tv in m["targets"].items():
        lines += [f"## Target `{tname}`", ""]
        if not tv.get("ran"):
            lines += [f"Did not run: {tv.get('reason')}", ""]
            continue
        info = ", ".join(f"{k} {tv[k]}" for k in ("runtime", "device", "threads") if tv.get(k) is not None)
        lines += [f"{info}; release artifact `{tv.get('release_artifact')}`; split `{manifest_split(manifest)}`.", ""]
        if tv.get("sequence_length_note"):
            lines += [f"Note: {tv['sequence_length_note']}.", ""]
        if tv.get("timing_note"):
            lines += [f"**Warning:** {tv['timing_note']}.", ""]
        models = tv.get("models", {})
        batches = sorted({int(b) for mv in models.values() for b in (mv.get("latency") or {})})
        head = "| model | accuracy | agreement | size (MB) |" + "".join(
            f" p50 / p95 / p99 ms @{timed_shape(b, tv)} | throughput/s @{timed_shape(b, tv)} |" for b in batches
        )
        big = str(max(batches)) if batches else None
        roofs = {name: roofline_at(mv, big) for name, mv in models.items()}
        with_roof = any(roofs.values())
        if with_roof:
            head += f" roofline floor ms @{timed_shape(big, tv)} | p95 / floor |"
        lines += [head, "|" + "---|" * (4 + 2 * len(batches) + 2 * with_roof)]
        for name, mv in models.items():
            row = f"| {name} | {_fmt(mv.get('accuracy'))} | {_fmt(mv.get('agreement'))} | {_fmt(mv.get('size_mb'))} |"
            for b in batches:
                st = (mv.get("latency") or {}).get(str(b)) or {}
                row += (
                    f" {_fmt(st.get('p50_ms'), '.3f')} / {_fmt(st.get('p95_ms'), '.3f')} / {_fmt(st.get('p99_ms'), '.3f')} |"
                    f" {_fmt(st.get('throughput_per_s'), '.0f')} |"
                )
            if with_roof:
                floor, ratio = roofline_cells(roofs[name])
                row += f" {floor} | {ratio} |"
            lines.append(row)
        if drops := drop_sentence(models):
            lines += ["", drops]
        if with_roof:
            lines += [
                "",
                "Roofline floor: FLOPs over the device's measured matrix rate or weight bytes over its "
                "measured copy rate, whichever is larger (compress.bench.roofline); p95 / floor is how far "
                "the measured latency is above it.",
            ]
        lines.append("")
    lines += [
        "## Reproduce",
        "",
        f"`compress run {manifest.get('pipeline_file')}` (versions: "
        + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items() if k != "platform")
        + ")",
        "",
    ]
    return "\n".join(lines)


def roofline_at(model: dict[str, Any], batch: str | None) -> dict[str, Any]:
    """The model's roofline entry at ``batch`` (empty when it was not computed)."""
    return ((model.get("roofline") or {}).get("by_batch") or {}).get(batch or "") or {}


def roofline_cells(roof: dict[str, Any]) -> tuple[str, str]:
    """Table cells for one roofline entry: ``floor ms (bound)`` and ``p95 / floor``, dashes when missing."""
    floor = f"{roof['floor_ms']:.4f} ({roof['bound']})" if roof else "–"
    ratio = _fmt(roof.get("p95_over_floor"), ".1f") + "x" if roof.get("p95_over_floor") is not None else "–"
    return floor, ratio


def drop_sentence(models: dict[str, Any]) -> str:
    """One sentence: each artifact's accuracy drop against the teacher, in points, with its 95 % interval.

    From the paired counts validate records (``compress.report.confidence``); empty when none has them.
    """
    parts, examples = [], 0
    for name, mv in models.items():
        if (paired := PairedCounts.from_dict(mv.get("paired"))) is not None:
            low, high = paired.interval(0.95)
            parts.append(f"{name} {100 * paired.drop:.2f} ({100 * low:.2f} to {100 * high:.2f})")
            examples = paired.examples
    if not parts:
        return ""
    return (
        f"Accuracy drop against the teacher in points, with its 95 % interval over the {examples:,} "
        "paired examples: " + "; ".join(parts) + "."
    )


def timed_shape(batch: int | str, target: dict[str, Any]) -> str:
    """The timed input shape for a column header: ``32``, or ``32x128`` (batch x tokens) for token inputs."""
    seq = target.get("sequence_length")
    return f"{batch}" if seq is None else f"{batch}x{seq}"


def manifest_split(manifest: dict[str, Any]) -> str:
    """The split the validate stage measured on."""
    for s in manifest.get("stages", []):
        if "split" in s.get("metrics", {}):
            return str(s["metrics"]["split"])
    return "test"


def write_reports(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write metrics.json, junit.xml, report.md and report.html (each atomically)."""
    from compress.report.html import render_html

    atomic_write_json(run_dir / "metrics.json", build_metrics(manifest))
    write_junit(run_dir / "junit.xml", str(manifest.get("name")), manifest.get("gates", []))
    atomic_write_text(run_dir / "report.md", render_markdown(manifest))
    atomic_write_text(run_dir / "report.html", render_html(manifest))
