"""Plans: how many heads and neurons each unit loses, chosen to land on a MAC target.

A plan is set by two knobs, the fractions of the *original* heads ``h`` and
FFN neurons ``f`` removed so far (cumulative, so every step of a schedule
aims at the same final shape):

* uniform ranking: every attention unit keeps ``H - floor(h * H)`` heads
  (at least one) and every FFN unit ``n - round(f * n)`` neurons, rounded
  down to a multiple of ``round_to`` and never below its minimum;
* global ranking: the ``floor(h * total_heads)`` (``round(f * total_neurons)``)
  lowest-scored heads (neurons) across all units go, except that no unit drops
  below its minimum.

Plans are priced exactly (``Layout.price``: every layer's MACs and parameters
scale with the kept fractions of the units on its input and output), so a
plan's MACs or parameters are known without pruning anything. The width knob
``f`` drives FFN neurons and CNN channels alike. The MAC fraction removed is monotone
but stepped in the knobs (whole heads are coarse), so ``Planner.search`` tries
every head level, bisects the FFN knob for each, and among the plans within
the acceptance window picks the most balanced one (head and FFN fractions
closest), otherwise the closest to the target; with uniform ranking, when no
knob pair lands on the final target, single width units give up one more
``round_to`` chunk each from the nearest plan below it (``Planner._refine``). ``prune_`` first searches the
final plan, then caps every earlier step's knobs at the final ones.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from compress.prune._graph import Layout, Unit


@dataclass(frozen=True)
class Candidate:
    """A plan and what it predicts.

    Attributes:
        plan: Unit name -> heads or neurons to remove in this step.
        macs: Predicted MACs per example after the step.
        removed: Predicted fraction of the original target metric (MACs or parameters) removed.
        head_ratio: Fraction of the original heads removed after the step.
        ffn_ratio: Fraction of the original FFN neurons removed after the step.
        knobs: The ``(head, ffn)`` knobs that produced the plan.
    """

    plan: dict[str, int]
    macs: float
    removed: float
    head_ratio: float
    ffn_ratio: float
    knobs: tuple[float, float]
    params: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    """The chosen candidate and the nearest ones on either side of the target."""

    best: Candidate
    below: Candidate | None
    above: Candidate | None


class Planner:
    """Turns knobs into plans for one layout and searches them.

    Args:
        layout: Units of the model now (with scores when ``global_ranking``).
        original: Unit name -> size before the first step.
        macs0: The target metric (MACs per example, or parameters) before the first step.
        round_to: FFN widths stay multiples of this.
        global_ranking: Rank across units by ``Unit.scores`` instead of the same ratio per unit.
        heads: Head pruning enabled.
        ffn: FFN (and CNN channel) pruning enabled.
        metric: What ``macs0`` and ``Candidate.removed`` measure: ``macs`` or ``params``.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        original: dict[str, int],
        macs0: int,
        round_to: int | None,
        global_ranking: bool,
        heads: bool,
        ffn: bool,
        metric: str = "macs",
    ) -> None:
        self.layout = layout
        self.original = original
        self.macs0 = macs0
        self.metric = metric
        self.round_to = round_to
        self.global_ranking = global_ranking
        self.heads = heads and bool(layout.of_kind("heads"))
        self.ffn = ffn and bool(layout.of_kind("ffn"))
        self._ranked = {kind: self._rank(layout.of_kind(kind)) for kind in ("heads", "ffn")}

    @staticmethod
    def _rank(units: list[Unit]) -> list[str]:
        """Unit name of every removable head or neuron, lowest score first.

        Within a unit the lowest-scored items go first, so only its ``removable`` lowest
        can ever be chosen: the first ``k`` entries of this list are the global plan for ``k``.
        """
        items: list[tuple[float, int, str]] = []
        for u in units:
            # Position breaks ties deterministically.
            items += sorted((s, i, u.name) for i, s in enumerate(u.scores))[: u.removable]
        return [name for _, _, name in sorted(items)]

    def _orig_total(self, kind: str) -> int:
        return sum(self.original.get(u.name, u.size) for u in self.layout.of_kind(kind))

    def _global_counts(self, kind: str, fraction: float, *, rounding: float) -> dict[str, int]:
        units = self.layout.of_kind(kind)
        gone = sum(self.original.get(u.name, u.size) - u.size for u in units)
        need = math.floor(fraction * self._orig_total(kind) + rounding) - gone
        counts = dict.fromkeys((u.name for u in units), 0)
        counts.update(Counter(self._ranked[kind][: max(0, need)]))
        return counts

    def plan(self, head_ratio: float, ffn_ratio: float) -> dict[str, int]:
        """Removal counts for this step from cumulative knobs."""
        plan: dict[str, int] = {}
        if self.heads and head_ratio > 0:
            if self.global_ranking:
                plan.update(self._global_counts("heads", head_ratio, rounding=1e-9))
            else:
                for u in self.layout.of_kind("heads"):
                    orig = self.original.get(u.name, u.size)
                    kept = max(u.min_size, orig - math.floor(head_ratio * orig + 1e-9))
                    plan[u.name] = max(0, u.size - kept)
        if self.ffn and ffn_ratio > 0:
            counts: dict[str, int] = {}
            if self.global_ranking:
                counts = self._global_counts("ffn", ffn_ratio, rounding=0.5)
            for u in self.layout.of_kind("ffn"):
                if self.global_ranking:
                    if counts[u.name] == 0:
                        continue
                    kept = u.size - counts[u.name]
                else:
                    orig = self.original.get(u.name, u.size)
                    kept = orig - math.floor(ffn_ratio * orig + 0.5)
                if self.round_to:
                    kept -= kept % self.round_to
                plan[u.name] = max(0, u.size - max(kept, u.min_size))
        return {k: v for k, v in plan.items() if v > 0}

    def candidate(self, head_ratio: float, ffn_ratio: float) -> Candidate:
        """The plan for the knobs, priced."""
        return self._priced(self.plan(head_ratio, ffn_ratio), (head_ratio, ffn_ratio))

    def _priced(self, plan: dict[str, int], knobs: tuple[float, float]) -> Candidate:
        units = {u.name: u for u in self.layout.units}
        macs = self.layout.price(plan, "macs")
        params = self.layout.price(plan, "params")
        value = macs if self.metric == "macs" else params
        fractions = []
        for kind in ("heads", "ffn"):
            total = self._orig_total(kind)
            left = sum(units[n].size - plan.get(n, 0) for n in units if units[n].kind == kind)
            fractions.append(1.0 - left / total if total else 0.0)
        return Candidate(plan, macs, 1.0 - value / self.macs0, fractions[0], fractions[1], knobs, params)

    def _refine(self, start: Candidate, target: float, accept_tol: float) -> Candidate | None:
        """From ``start`` (below the target), remove one ``round_to`` chunk more at a time from single width
        units, each time the chunk that lands closest to the target without passing it by more than
        ``accept_tol``, until on target. Uniform width knobs move every unit at once, which with
        ``round_to`` on CNN channel groups can step over the target; this fills the gap, keeping
        the widths as even as the chunks allow (the widest unit relative to its original goes first on ties).
        """
        chunk = self.round_to or 1
        plan = dict(start.plan)
        units = self.layout.of_kind("width")
        best = start
        for _ in range(sum(u.size for u in units) // chunk + 1):
            if abs(best.removed - target) <= accept_tol:
                return best
            options = []
            for u in units:
                c = plan.get(u.name, 0) + chunk
                if u.size - c < u.min_size:
                    continue
                trial = self._priced({**plan, u.name: c}, start.knobs)
                if trial.removed <= target + accept_tol:
                    kept = (u.size - c) / self.original.get(u.name, u.size)
                    options.append((-trial.removed, -kept, u.name, trial))
            if not options:
                return None
            *_, name, best = min(options)
            plan = dict(best.plan)
        return best if abs(best.removed - target) <= accept_tol else None

    def most(self) -> Candidate:
        """Everything allowed removed: one head per attention and the minimum FFN width left."""
        return self.candidate(1.0 if self.heads else 0.0, 1.0 if self.ffn else 0.0)

    def search(
        self, target: float, *, accept_tol: float, cap: tuple[float, float] | None = None
    ) -> SearchResult:
        """The plan whose predicted removed fraction is closest to ``target``, balanced when it can be.

        Args:
            target: Wanted fraction of the original MACs removed after this step.
            accept_tol: Plans this close to the target count as on target; among them the
                one with the closest head and FFN fractions wins.
            cap: Largest ``(head, ffn)`` knobs to consider: intermediate steps stay on the
                way to the final plan's knobs, so that coarse heads are not traded away
                early for FFN neurons the final shape would not give up.
        """
        h_max, f_max = cap if cap is not None else (1.0, 1.0)
        # Count breakpoints of the FFN knob are (k - 1/2) / n per unit (uniform) or per total
        # (global); they are never closer than these, so finer steps cannot change any count.
        sizes = [self.original.get(u.name, u.size) for u in self.layout.of_kind("ffn")]
        resolution = 0.25 / max(max(sizes, default=1) ** 2, sum(sizes), 1)
        cands: list[Candidate] = []
        for h in self._head_levels():
            if h > h_max + 1e-12:
                break
            first = self.candidate(h, 0.0)
            if not self.ffn or first.removed >= target:
                cands.append(first)
                if first.removed > target + accept_tol:
                    break  # more heads only moves further away
                continue
            lo, hi = 0.0, f_max
            c_lo, c_hi = first, self.candidate(h, f_max)
            if c_hi.removed <= target:
                cands.append(c_hi)
                continue
            while hi - lo > resolution:
                mid = 0.5 * (lo + hi)
                c = self.candidate(h, mid)
                if c.removed > target:
                    hi, c_hi = mid, c
                else:
                    lo, c_lo = mid, c
            cands += [c_lo, c_hi]
        on_target = [c for c in cands if abs(c.removed - target) <= accept_tol]
        if not on_target and self.ffn and not self.global_ranking and cap is None:
            below = max((c for c in cands if c.removed <= target), key=lambda c: c.removed, default=None)
            refined = self._refine(below, target, accept_tol) if below is not None else None
            if refined is not None:
                cands.append(refined)
                on_target = [refined]
        if on_target:
            best = min(on_target, key=lambda c: (abs(c.head_ratio - c.ffn_ratio), abs(c.removed - target)))
        else:
            best = min(cands, key=lambda c: abs(c.removed - target))
        below = max((c for c in cands if c.removed <= target), key=lambda c: c.removed, default=None)
        above = min((c for c in cands if c.removed >= target), key=lambda c: c.removed, default=None)
        return SearchResult(best, below, above)

    def _head_levels(self) -> list[float]:
        if not self.heads:
            return [0.0]
        units = self.layout.of_kind("heads")
        if self.global_ranking:
            total = self._orig_total("heads")
            return [k / total for k in range(total)]
        levels = {
            k / self.original.get(u.name, u.size)
            for u in units
            for k in range(self.original.get(u.name, u.size))
        }
        return sorted(levels)
