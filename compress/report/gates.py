"""Release gates: compare measured metrics with budgets. Fail closed.

A gate passes only when its metric was measured and is within budget. A
budget whose target did not run, whose artifact is missing or whose metric is
absent fails, with the reason as its message.

Measurements come from the manifest: every stage whose metrics hold a
``targets`` mapping (the ``validate`` stage) contributes per-target results:
``targets.<name>.models.<model>.{accuracy, agreement, size_mb, latency.<batch>.p95_ms...}``
with ``release_artifact`` naming the model the target deploys and ``teacher``
measured in the same run.
"""

from __future__ import annotations

from typing import Any

from compress.config.schema import AccuracyGateConfig, GatesConfig
from compress.report.confidence import PairedCounts


def _shown(value: float, budget: float, places: int) -> str:
    """``value`` to ``places`` decimals, or to as many more (up to 9) as it takes not to print equal to
    ``budget`` when it differs from it: a failed gate never reads "0.9300 < 0.93"."""
    text = f"{value:.{places}f}"
    while value != budget and places < 9 and float(text) == budget:
        places += 1
        text = f"{value:.{places}f}"
    return text


def _gate(name: str, passed: bool, measured: Any, budget: Any, message: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "measured": measured, "budget": budget, "message": message}


def collect_targets(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-target measurements from every stage that produced them (later stages win)."""
    out: dict[str, dict[str, Any]] = {}
    for st in manifest.get("stages", []):
        t = st.get("metrics", {}).get("targets")
        if isinstance(t, dict):
            out.update(t)
    return out


def _release(tname: str, t: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The release artifact's measurements on a target, or None with the reason."""
    if not t.get("ran"):
        return None, f"target '{tname}' did not run: {t.get('reason') or 'no reason recorded'}"
    rel = t.get("release_artifact")
    if t.get("release_missing"):
        return None, f"release artifact of '{tname}' missing: {t['release_missing']}"
    models = t.get("models", {})
    if not rel or rel not in models:
        return None, f"release artifact '{rel}' was not measured on '{tname}'"
    return models[rel], ""


def _timing_caveat(t: dict[str, Any]) -> str:
    """`` (not clean: ...)`` when validate saw another process on the target's GPU while timing."""
    return f" (not clean: {t['timing_note']})" if t.get("timing_note") else ""


def _speedup_gate(
    name: str, budget: float, batch: int, t: dict[str, Any], stats: dict[str, Any] | None, why: str
) -> dict[str, Any]:
    """Teacher p95 / artifact p95 on one target and batch (both from the same validate run)."""
    teacher = ((t.get("models") or {}).get("teacher") or {}).get("latency", {}).get(str(batch))
    if stats is None or stats.get("p95_ms") is None:
        return _gate(
            name, False, None, budget, why or f"batch {batch} of the release artifact was not measured"
        )
    if teacher is None or teacher.get("p95_ms") is None:
        reason = ((t.get("models") or {}).get("teacher") or {}).get(
            "error"
        ) or f"teacher not timed at batch {batch}"
        return _gate(
            name, False, None, budget, f"speed-up needs the teacher's p95 on the same target: {reason}"
        )
    ratio = teacher["p95_ms"] / stats["p95_ms"]
    ok = ratio >= budget
    return _gate(
        name,
        ok,
        round(ratio, 4),
        budget,
        f"{t.get('release_artifact')} p95 {stats['p95_ms']:.3f} ms vs teacher {teacher['p95_ms']:.3f} ms: "
        f"{_shown(ratio, budget, 2)}x {'>=' if ok else '<'} {budget}x{_timing_caveat(t)}",
    )


def evaluate_gates(gates: GatesConfig, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate every configured gate against the manifest.

    Returns:
        One dict per gate check: ``name``, ``passed``, ``measured``, ``budget``, ``message``.
    """
    results: list[dict[str, Any]] = []
    targets = collect_targets(manifest)
    per_artifact = [
        n for n in ("accuracy", "agreement", "size", "peak_memory") if getattr(gates, n) is not None
    ]
    for gname in per_artifact:
        if not targets:
            results.append(_gate(gname, False, None, None, f"{gname}: no validate stage measured any target"))
    for tname, t in targets.items():
        rel, why = _release(tname, t)
        teacher = (t.get("models") or {}).get("teacher")
        if gates.accuracy is not None:
            results.append(_accuracy_gate(gates.accuracy, tname, t, rel, teacher, why))
        if gates.agreement is not None:
            name = f"agreement[{tname}]"
            val = None if rel is None else rel.get("agreement")
            if val is None:
                results.append(_gate(name, False, None, gates.agreement.min, why or "agreement not measured"))
            else:
                ok = val >= gates.agreement.min
                results.append(
                    _gate(
                        name,
                        ok,
                        val,
                        gates.agreement.min,
                        f"top-1 agreement {_shown(val, gates.agreement.min, 4)} "
                        f"{'>=' if ok else '<'} {gates.agreement.min}",
                    )
                )
        if gates.size is not None:
            name = f"size[{tname}]"
            val = None if rel is None else rel.get("size_mb")
            if val is None:
                results.append(_gate(name, False, None, gates.size.max_mb, why or "size not measured"))
            else:
                ok = val <= gates.size.max_mb
                results.append(
                    _gate(
                        name,
                        ok,
                        val,
                        gates.size.max_mb,
                        f"{_shown(val, gates.size.max_mb, 4)} MB "
                        f"{'<=' if ok else '>'} {gates.size.max_mb} MB",
                    )
                )
        if gates.peak_memory is not None:
            results.append(_peak_memory_gate(gates.peak_memory, tname, t, rel, why))
    for tname, budget in gates.latency.items():
        t = targets.get(tname)
        base = f"latency[{tname}]@{budget.batch}"
        checks = [(k, getattr(budget, k)) for k in ("p50_ms", "p95_ms", "p99_ms", "min_throughput")]
        checks = [(k, v) for k, v in checks if v is not None]
        if t is None:
            if budget.min_speedup is not None:
                checks.append(("min_speedup", budget.min_speedup))
            for k, v in checks:
                results.append(_gate(f"{base}.{k}", False, None, v, f"target '{tname}' was not validated"))
            continue
        rel, why = _release(tname, t)
        stats = None if rel is None else (rel.get("latency") or {}).get(str(budget.batch))
        if budget.min_speedup is not None:
            results.append(
                _speedup_gate(f"{base}.min_speedup", budget.min_speedup, budget.batch, t, stats, why)
            )
        for k, v in checks:
            name = f"{base}.{k}"
            if stats is None:
                results.append(
                    _gate(name, False, None, v, why or f"batch {budget.batch} was not measured on '{tname}'")
                )
                continue
            key = "throughput_per_s" if k == "min_throughput" else k
            val = stats.get(key)
            if val is None:
                results.append(_gate(name, False, None, v, f"{key} missing from the measurements"))
                continue
            ok = val >= v if k == "min_throughput" else val <= v
            unit = "/s" if k == "min_throughput" else " ms"
            cmp = (">=" if ok else "<") if k == "min_throughput" else ("<=" if ok else ">")
            results.append(
                _gate(
                    name,
                    ok,
                    round(val, 4),
                    v,
                    f"{t.get('release_artifact')} {key} {_shown(val, v, 3)}{unit} {cmp} {v}{unit}"
                    f"{_timing_caveat(t)}",
                )
            )
    # gates a stage declared itself (e.g. prune's latency budget): the stage measured, the run gates
    for st in manifest.get("stages", []):
        for g in (st.get("metrics") or {}).get("gates") or []:
            results.append(
                _gate(
                    str(g["name"]),
                    bool(g["passed"]),
                    g.get("measured"),
                    g.get("budget"),
                    str(g.get("message", "")),
                )
            )
    return results


def _peak_memory_gate(
    g: Any, tname: str, t: dict[str, Any], rel: dict[str, Any] | None, why: str
) -> dict[str, Any]:
    """``peak_memory[<target>]``: the release artifact's peak memory on a target, failing closed."""
    name = f"peak_memory[{tname}]"
    key = g.metric if g.metric != "auto" else ("gpu_peak_mb" if t.get("device") == "cuda" else "peak_rss_mb")
    budget = {"max_mb": g.max_mb, "metric": key}
    if rel is None:
        return _gate(name, False, None, budget, why)
    memory = rel.get("memory") or {}
    val = memory.get(key)
    if val is None:
        detail = f" ({memory['gpu_method']})" if key == "gpu_peak_mb" and memory.get("gpu_method") else ""
        return _gate(name, False, None, budget, f"{key} was not measured on '{tname}'{detail}")
    ok = val <= g.max_mb
    return _gate(
        name,
        ok,
        round(val, 3),
        budget,
        f"{t.get('release_artifact')} {key} {val:.1f} MB {'<=' if ok else '>'} {g.max_mb} MB",
    )


def _accuracy_gate(
    g: AccuracyGateConfig,
    tname: str,
    t: dict[str, Any],
    rel: dict[str, Any] | None,
    teacher: dict[str, Any] | None,
    why: str,
) -> dict[str, Any]:
    """``accuracy[<target>]``: the release artifact's drop against the teacher on the same split.

    The message carries the drop's 95 % interval from the paired counts (``compress.report.confidence``);
    with ``confidence`` the upper bound at that level is judged, and a run without the counts fails closed.
    """
    name = f"accuracy[{tname}]"
    budget: dict[str, Any] = {"max_drop": g.max_drop, "relative": g.relative}
    if g.confidence is not None:
        budget["confidence"] = g.confidence
    if rel is None or teacher is None or rel.get("accuracy") is None or teacher.get("accuracy") is None:
        return _gate(name, False, None, budget, why or "accuracy of teacher or artifact missing")
    teacher_acc = teacher["accuracy"]
    # a relative drop divides by the teacher's accuracy (taken as exact: its own noise is left out)
    scale = 1.0
    if g.relative:
        scale = 1 / teacher_acc if teacher_acc > 0 else float("inf")
    drop = (teacher_acc - rel["accuracy"]) * scale
    paired = PairedCounts.from_dict(rel.get("paired"))
    what = (
        f"{t.get('release_artifact')} accuracy {rel['accuracy']:.4f} vs teacher {teacher_acc:.4f}: "
        f"drop {_shown(drop, g.max_drop, 4)}"
    )
    if paired is not None:
        low, high = paired.interval(0.95)
        what += (
            f" (95 % interval {low * scale:.4f} to {high * scale:.4f}"
            f" over {paired.examples:,} paired examples)"
        )
    if g.confidence is None:
        ok = drop <= g.max_drop + 1e-12
        return _gate(name, ok, round(drop, 6), budget, f"{what} {'<=' if ok else '>'} {g.max_drop}")
    if paired is None:
        return _gate(
            name,
            False,
            round(drop, 6),
            budget,
            f"{what}; confidence {g.confidence} needs the paired counts of teacher and artifact, which this "
            "run's validate stage did not record: run it again with `compress run FILE --rerun validate` "
            "(the stages before it stay cached)",
        )
    bound = paired.upper_bound(g.confidence) * scale
    ok = bound <= g.max_drop + 1e-12
    return _gate(
        name,
        ok,
        round(drop, 6),
        budget,
        f"{what}; upper {g.confidence * 100:g} % bound {_shown(bound, g.max_drop, 4)} {'<=' if ok else '>'} "
        f"{g.max_drop}",
    )
