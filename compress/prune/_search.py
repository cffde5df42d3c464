"""Search the per-step pruning ratios that land the MACs on the schedule.

The MAC fraction removed is a monotone but stepped, non-linear function of the
channel ratio (whole heads are coarse, neurons fine, attention matmuls scale
with heads). Each step therefore searches two knobs, the head ratio ``h`` and
the FFN ratio ``f`` (fractions of the units entering the step):

1. one shared ratio ``h = f = s``, bracketed and narrowed by false position
   (interpolation, kept at least a quarter inside the bracket so it always
   shrinks);
2. if a head boundary jumps over the target, the head ratio is frozen at each
   side of the jump in turn and the FFN ratio alone is searched.

The closest feasible evaluation wins. ``evaluate(h, f)`` prunes a copy and
returns the removed fraction of the original MACs, or ``None`` when the ratios
would empty a layer (treated as "too much").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from compress.prune._graph import Layout

Evaluate = Callable[[float, float], "float | None"]


@dataclass
class Best:
    """Closest evaluation so far: removed fraction and the knobs ``(head_ratio, ffn_ratio)``."""

    removed: float
    knobs: tuple[float, float]
    error: float


def local_plan(
    layout: Layout, head_ratio: float, ffn_ratio: float, *, round_to: int | None
) -> dict[str, int]:
    """Exact per-unit removal counts for uniform (per-layer) ratios.

    Heads: ``floor(h * H)`` (never more than the ratio asks), at most ``H - 1``.
    FFN: ``round(f * n)``, the kept width rounded down to a multiple of ``round_to``,
    never below the unit's minimum.
    """
    plan: dict[str, int] = {}
    for u in layout.units:
        if u.kind == "heads":
            if head_ratio <= 0:
                continue
            c = min(u.removable, math.floor(head_ratio * u.size + 1e-9))
        else:
            if ffn_ratio <= 0:
                continue
            kept = u.size - math.floor(ffn_ratio * u.size + 0.5)
            if round_to:
                kept -= kept % round_to
            c = u.size - max(kept, u.min_size)
        if c > 0:
            plan[u.name] = c
    return plan


def search_ratios(
    evaluate: Evaluate,
    target: float,
    *,
    heads: bool,
    ffn: bool,
    stop_tol: float,
    max_iter: int = 14,
) -> Best | None:
    """Knobs whose evaluation is closest to ``target`` (a removed MAC fraction).

    Args:
        evaluate: ``(head_ratio, ffn_ratio) -> removed fraction`` or ``None`` if infeasible.
        target: Wanted removed fraction of the original MACs.
        heads: Head pruning enabled (else the head ratio stays 0).
        ffn: FFN pruning enabled (else the FFN ratio stays 0).
        stop_tol: Stop as soon as an evaluation is this close.
        max_iter: Evaluations per bracket narrowing.

    Returns:
        The best feasible evaluation, or ``None`` if none was feasible.
    """
    best: Best | None = None

    def ev(knobs: tuple[float, float]) -> float | None:
        nonlocal best
        r = evaluate(*knobs)
        if r is not None and (best is None or abs(r - target) < best.error - 1e-12):
            best = Best(removed=r, knobs=knobs, error=abs(r - target))
        return r

    def done() -> bool:
        return best is not None and best.error <= stop_tol

    def narrow(knob: Callable[[float], tuple[float, float]], lo: float, hi: float) -> tuple[float, float]:
        r_lo = ev(knob(lo))
        if r_lo is None or r_lo >= target or done():
            return lo, lo
        r_hi = ev(knob(hi))
        if r_hi is not None and r_hi <= target:
            return hi, hi
        for _ in range(max_iter):
            if done() or hi - lo < 1e-4:
                break
            if r_hi is None:
                s = 0.5 * (lo + hi)
            else:
                s = lo + (target - r_lo) * (hi - lo) / max(r_hi - r_lo, 1e-12)
                margin = 0.25 * (hi - lo)
                s = min(max(s, lo + margin), hi - margin)
            r = ev(knob(s))
            if r is None or r > target:
                hi, r_hi = s, r
            else:
                lo, r_lo = s, r
        return lo, hi

    lo, hi = narrow(lambda s: (s if heads else 0.0, s if ffn else 0.0), 0.0, 1.0)
    if not done() and heads and ffn and lo < hi:
        # A head boundary lies between lo and hi: let the FFN ratio absorb the rest.
        narrow(lambda s: (lo, s), lo, 1.0)
        if not done():
            narrow(lambda s: (hi, s), 0.0, hi)
    return best
