"""``report.html``: the self-contained report a person opens in a browser (no network, no scripts).

Everything is inline: CSS in a ``<style>`` block, plots as SVG images embedded as base64
``data:`` URIs (each plot its own document, so their internal ids cannot clash). The page has:

* the summary verdict and the gates (measured value, budget, message);
* the per-stage table (status, time, val/test accuracy, params, MACs, fp32 weight size) and the
  artifacts table (file, precision, size, sha256);
* per target, every model measured there: accuracy, agreement, size, host peak RSS, GPU peak,
  p50/p95/p99 and throughput per batch size, the clock that timed it, the roofline floor and
  p95 / floor at the largest batch;
* plots (matplotlib, when installed): accuracy vs p95 latency per target with the Pareto front
  marked, the latency distribution per target (min, p50, p90, p95, p99, max per model and
  batch), per-stage accuracy and size, and the training curves of every stage that recorded a
  ``history`` (losses and validation accuracy per step; QAT with Teacher Intervention marks
  where its phases change).

Without matplotlib the page still renders every table and says that the plots were skipped and
how to get them (``pip install 'compress[report]'``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from compress.report.markdown import (
    build_metrics,
    drop_sentence,
    manifest_split,
    roofline_at,
    roofline_cells,
    timed_shape,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2330;background:#fff;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d6dae3}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}
th,td{border:1px solid #d6dae3;padding:.25rem .5rem;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
.verdict{display:inline-block;padding:.3rem .9rem;border-radius:.3rem;font-weight:700;color:#fff}
.pass{background:#1f8f4e}.fail{background:#c0392b}.unknown{background:#7f8c8d}
.ok{color:#1f8f4e;font-weight:600}.bad{color:#c0392b;font-weight:600}
.note{color:#5a6272;font-size:.85rem}figure{margin:1rem 0}img.plot{max-width:100%;border:1px solid #eef1f6}
code{background:#f4f6fa;padding:0 .2rem}
"""

MATPLOTLIB_HINT = "pip install 'compress[report]'"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, spec)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are already-escaped HTML."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(latency, accuracy)`` points no other point beats (lower latency and higher accuracy).

    A point is dominated when another has latency ``<=`` and accuracy ``>=``, one of them strictly.

    Example:
        >>> pareto_front([(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (1.0, 0.85)])
        [True, True, False, False]
    """
    out = []
    for i, (li, ai) in enumerate(points):
        dominated = any(
            lj <= li and aj >= ai and (lj < li or aj > ai) for j, (lj, aj) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


# ---------------------------------------------------------------------------------- plots


def _svg_img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img class="plot" alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}"></figure>'


def _largest_batch(models: dict[str, Any]) -> str | None:
    batches = {int(b) for mv in models.values() for b in (mv.get("latency") or {})}
    return str(max(batches)) if batches else None


def _plot_pareto(Figure: Any, tname: str, tv: dict[str, Any]) -> str | None:
    models = tv.get("models") or {}
    big = _largest_batch(models)
    pts = [
        (name, mv["latency"][big]["p95_ms"], mv["accuracy"])
        for name, mv in models.items()
        if big and mv.get("accuracy") is not None and (mv.get("latency") or {}).get(big)
    ]
    if not pts:
        return None
    front = pareto_front([(p[1], p[2]) for p in pts])
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for (name, lat, acc), on in zip(pts, front, strict=True):
        ax.scatter(
            [lat],
            [acc],
            s=60,
            marker="*" if name == "teacher" else "o",
            color="#c0392b" if on else "#7f8c8d",
            zorder=3,
        )
        ax.annotate(name, (lat, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fr = sorted((p[1], p[2]) for p, on in zip(pts, front, strict=True) if on)
    ax.step(
        [f[0] for f in fr],
        [f[1] for f in fr],
        where="post",
        color="#c0392b",
        lw=1,
        ls="--",
        label="Pareto front",
    )
    ax.set_xlabel(f"p95 latency at batch {big} (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{tname}: accuracy vs p95 latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg_img(fig, f"accuracy vs p95 latency on {tname}")


def _plot_latency(Figure: Any, tname: str, tv: dict[str, Any]) -> str | None:
    models = tv.get("models") or {}
    rows = [
        (f"{name} @{b}", st)
        for name, mv in models.items()
        for b, st in sorted((mv.get("latency") or {}).items(), key=lambda kv: int(kv[0]))
    ]
    if not rows:
        return None
    fig = Figure(figsize=(7.0, 0.45 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    for i, (_label, st) in enumerate(rows):
        ax.plot([st.get("min_ms"), st.get("max_ms")], [i, i], color="#95a5a6", lw=1)
        ax.plot([st["p50_ms"], st["p95_ms"]], [i, i], color="#2c7fb8", lw=7, solid_capstyle="butt")
        ax.plot([st["p50_ms"]], [i], marker="|", color="#fff", ms=9, mew=2)
        ax.plot([st["p99_ms"]], [i], marker="D", color="#c0392b", ms=4)
        ax.plot([st["p90_ms"]], [i], marker="|", color="#1d2330", ms=9)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms, log scale): line min-max, bar p50-p95, tick p90, diamond p99")
    ax.set_title(f"{tname}: latency distribution")
    ax.grid(alpha=0.3, axis="x")
    return _svg_img(fig, f"latency distribution on {tname}")


def _plot_stages(Figure: Any, m: dict[str, Any]) -> str | None:
    t = m.get("teacher") or {}
    rows = [("teacher", t)] + [(s["id"], s.get("model") or {}) for s in m["stages"]]
    rows = [(n, mm) for n, mm in rows if mm.get("test_accuracy") is not None or mm.get("params") is not None]
    if len(rows) < 1:
        return None
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = [r[0] for r in rows]
    ax1.bar(names, [r[1].get("test_accuracy") or 0 for r in rows], color="#2c7fb8")
    accs = [r[1].get("test_accuracy") for r in rows if r[1].get("test_accuracy") is not None]
    if accs:
        ax1.set_ylim(max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.02))
    ax1.set_title("test accuracy per stage")
    ax2.bar(names, [(r[1].get("params") or 0) / 1e3 for r in rows], color="#7fb8a4")
    ax2.set_title("parameters per stage (thousands)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    return _svg_img(fig, "per-stage accuracy and size")


_NOT_LOSS = {"step", "epoch", "phase", "mode", "lr"}


def _plot_history(Figure: Any, sid: str, history: list[dict[str, Any]]) -> str | None:
    rows = [r for r in history if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]
    if len(rows) < 1:
        return None
    steps = [r["step"] for r in rows]
    losses = sorted(
        {
            k
            for r in rows
            for k, v in r.items()
            if k not in _NOT_LOSS and not k.startswith("val_") and isinstance(v, (int, float))
        }
    )
    fig = Figure(figsize=(7.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for k in losses:
        ax.plot(steps, [r.get(k) for r in rows], marker=".", lw=1, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if any(r.get("val_accuracy") is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(
            steps,
            [r.get("val_accuracy") for r in rows],
            color="#1d2330",
            ls="--",
            marker="o",
            ms=3,
            label="val_accuracy",
        )
        ax2.set_ylabel("val accuracy")
        ax2.legend(loc="lower right", fontsize=8)
    prev = None
    for r in rows:
        phase = r.get("phase")
        if phase is not None and phase != prev:
            ax.axvline(r["step"], color="#c0392b", lw=0.8, ls=":")
            mode = f" ({r['mode']})" if r.get("mode") else ""
            ax.annotate(
                f"{phase}{mode}",
                (r["step"], 1),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="#c0392b",
                rotation=90,
                va="top",
                ha="right",
            )
            prev = phase
    if losses:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{sid}: training curves")
    ax.grid(alpha=0.3)
    return _svg_img(fig, f"training curves of {sid}")


def _plots(manifest: dict[str, Any], m: dict[str, Any]) -> tuple[dict[str, list[str]], str | None]:
    """Rendered plots by section, or ``({}, why)`` when matplotlib is missing."""
    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        return {}, f"Plots skipped: matplotlib is not installed ({MATPLOTLIB_HINT})."
    out: dict[str, list[str]] = {"stages": [], "training": []}
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "compress"}):
        for tname, tv in m["targets"].items():
            if tv.get("ran"):
                out[f"target:{tname}"] = [
                    p for p in (_plot_pareto(Figure, tname, tv), _plot_latency(Figure, tname, tv)) if p
                ]
        p = _plot_stages(Figure, m)
        if p:
            out["stages"].append(p)
        for s in manifest.get("stages", []):
            hist = (s.get("metrics") or {}).get("history")
            if isinstance(hist, list) and hist:
                p = _plot_history(Figure, s["id"], hist)
                if p:
                    out["training"].append(p)
    return out, None


# ---------------------------------------------------------------------------------- page


def render_html(manifest: dict[str, Any]) -> str:
    """The whole report page for a run manifest (self-contained HTML).

    Args:
        manifest: The run's ``manifest.json`` content.

    Returns:
        One HTML document; no external resources.

    Example:
        >>> page = render_html({"name": "demo", "stages": [], "artifacts": {}})
        >>> page.startswith("<!DOCTYPE html>") and "demo" in page
        True
    """
    m = build_metrics(manifest)
    plots, skipped = _plots(manifest, m)
    verdict = (m["verdict"] or "unknown").lower()
    gates = m["gates"] or []
    passed = sum(1 for g in gates if g["passed"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>compress report: {_e(m['name'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>compress report: {_e(m['name'])}</h1>",
        f'<p><span class="verdict {_e(verdict if verdict in ("pass", "fail") else "unknown")}">'
        f"{_e(verdict.upper())}</span> "
        + (f"{passed} of {len(gates)} gates passed" if gates else "no gates configured")
        + f"; wall time {_e(_fmt(m['wall_seconds'], '.1f'))} s.</p>",
    ]
    if skipped:
        parts.append(f'<p class="note">{_e(skipped)}</p>')
    if gates:
        parts.append("<h2>Gates</h2>")
        parts.append(
            _table(
                ["gate", "result", "measured", "budget", "detail"],
                [
                    [
                        _e(g["name"]),
                        '<span class="ok">PASS</span>' if g["passed"] else '<span class="bad">FAIL</span>',
                        _e(_fmt(g["measured"])),
                        _e(_fmt(g["budget"])),
                        _e(g["message"]),
                    ]
                    for g in gates
                ],
            )
        )
    parts.append("<h2>Stages</h2>")
    t = m["teacher"] or {}
    stage_rows = [["teacher", "–", "–", *_model_cells(t)]]
    for s in m["stages"]:
        stage_rows.append(
            [_e(s["id"]), _e(s["status"]), _e(_fmt(s["seconds"], ".1f")), *_model_cells(s["model"] or {})]
        )
    parts.append(
        _table(
            [
                "stage",
                "status",
                "time (s)",
                "val acc",
                "test acc",
                "params",
                "MACs / example",
                "fp32 weights (MB)",
            ],
            stage_rows,
        )
    )
    parts.extend(plots.get("stages", []))
    if m["artifacts"]:
        parts.append("<h2>Artifacts</h2>")
        parts.append(
            _table(
                ["artifact", "file", "format", "precision", "size (MB)", "sha256"],
                [
                    [
                        _e(n),
                        f"<code>{_e(a.get('path'))}</code>",
                        _e(a.get("format", "–")),
                        _e(a.get("precision")),
                        _e(_fmt(a.get("size_bytes", 0) / 1e6)),
                        f"<code>{_e(str(a.get('sha256', ''))[:12])}</code>",
                    ]
                    for n, a in m["artifacts"].items()
                ],
            )
        )
    for tname, tv in m["targets"].items():
        parts.append(f"<h2>Target <code>{_e(tname)}</code></h2>")
        if not tv.get("ran"):
            parts.append(f"<p>Did not run: {_e(tv.get('reason'))}</p>")
            continue
        info = ", ".join(f"{k} {tv[k]}" for k in ("runtime", "device", "threads") if tv.get(k) is not None)
        parts.append(
            f"<p>{_e(info)}; release artifact <code>{_e(tv.get('release_artifact'))}</code>; "
            f"split <code>{_e(manifest_split(manifest))}</code>.</p>"
        )
        if tv.get("release_missing"):
            parts.append(f'<p class="bad">{_e(tv["release_missing"])}</p>')
        if tv.get("sequence_length_note"):
            parts.append(f'<p class="note">Note: {_e(tv["sequence_length_note"])}.</p>')
        if tv.get("timing_note"):
            parts.append(f'<p class="bad">Warning: {_e(tv["timing_note"])}.</p>')
        parts.append(_target_table(tv.get("models") or {}, tv))
        if drops := drop_sentence(tv.get("models") or {}):
            parts.append(f"<p>{_e(drops)}</p>")
        parts.extend(plots.get(f"target:{tname}", []))
    if plots.get("training"):
        parts.append("<h2>Training curves</h2>")
        parts.extend(plots["training"])
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if k != "platform")
    parts.append("<h2>Reproduce</h2>")
    parts.append(f"<p><code>compress run {_e(manifest.get('pipeline_file'))}</code> ({_e(versions)})</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _model_cells(mm: dict[str, Any]) -> list[str]:
    params = mm.get("params")
    return [
        _e(_fmt(mm.get("val_accuracy"))),
        _e(_fmt(mm.get("test_accuracy"))),
        _e(_fmt(params)),
        _e(_fmt(mm.get("macs"))),
        _e(_fmt(params * 4 / 1e6 if isinstance(params, int) else None, ".3f")),
    ]


def _target_table(models: dict[str, Any], target: dict[str, Any]) -> str:
    batches = sorted({int(b) for mv in models.values() for b in (mv.get("latency") or {})})
    big = str(max(batches)) if batches else None
    head = ["model", "accuracy", "agreement", "size (MB)", "host peak RSS (MB)", "GPU peak (MB)"]
    for b in batches:
        head += [f"p50 / p95 / p99 ms @{timed_shape(b, target)}", f"throughput/s @{timed_shape(b, target)}"]
    shape = timed_shape(big, target) if big else None
    head += ["clock", f"floor ms @{shape}", f"p95 / floor @{shape}"]
    rows = []
    for name, mv in models.items():
        if "error" in mv:
            rows.append(
                [_e(name), f'<span class="bad">error</span>: {_e(mv["error"])}'] + [""] * (len(head) - 2)
            )
            continue
        mem = mv.get("memory") or {}
        gpu = mem.get("gpu_peak_mb")
        gpu_cell = (
            _e(_fmt(gpu, ".1f"))
            if gpu is not None
            else f'<span class="note" title="{_e(mem.get("gpu_method") or "not measured")}">n/a</span>'
        )
        row = [
            _e(name),
            _e(_fmt(mv.get("accuracy"))),
            _e(_fmt(mv.get("agreement"))),
            _e(_fmt(mv.get("size_mb"))),
            _e(_fmt(mem.get("peak_rss_mb"), ".1f")),
            gpu_cell,
        ]
        clocks = set()
        for b in batches:
            st = (mv.get("latency") or {}).get(str(b)) or {}
            if st.get("clock"):
                clocks.add(st["clock"])
            row += [
                _e(" / ".join(_fmt(st.get(k), ".3f") for k in ("p50_ms", "p95_ms", "p99_ms"))),
                _e(_fmt(st.get("throughput_per_s"), ".0f")),
            ]
        row += [_e(", ".join(sorted(clocks)) or "–"), *(_e(c) for c in roofline_cells(roofline_at(mv, big)))]
        rows.append(row)
    return _table(head, rows)
