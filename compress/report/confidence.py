"""How sure one run's accuracy drop is: paired counts and their confidence interval.

Teacher and artifact are scored on the same examples, so their accuracies are not independent. Per example
``d = [teacher right] - [artifact right]`` is -1, 0 or 1; the drop is the mean of ``d``:

    drop = (b - c) / n          b: only the teacher is right, c: only the artifact is right, n: examples
    se   = sqrt(((b + c) / n - drop**2) / n)
    interval = drop -+ z * se   (z of the normal distribution at the confidence asked)

This is the Wald interval of a paired difference of proportions (the one McNemar's test belongs to). On
11,766 examples where teacher and artifact disagree 8 % of the time, ``se`` is about 0.26 points, so a
95 % interval is about +-0.5 point: a 1-point budget cannot tell 0.8 from 1.2 in one run.

The validate stage records ``paired: {examples, teacher_only, artifact_only}`` for every artifact measured
beside the teacher; the accuracy gate reports the 95 % interval and, with ``confidence:``, judges the
upper bound instead of the measured drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedCounts:
    """Correct-answer counts of teacher and artifact on the same ``examples``."""

    examples: int
    teacher_only: int  # the teacher right, the artifact wrong
    artifact_only: int  # the artifact right, the teacher wrong

    @classmethod
    def of(cls, labels: np.ndarray, teacher_preds: np.ndarray, artifact_preds: np.ndarray) -> PairedCounts:
        """Count from labels and both models' predictions (one per example, same order)."""
        y, tp, ap = np.asarray(labels), np.asarray(teacher_preds), np.asarray(artifact_preds)
        if tp.shape != y.shape or ap.shape != y.shape:
            raise ValueError(f"shapes differ: labels {y.shape}, teacher {tp.shape}, artifact {ap.shape}")
        t, a = tp == y, ap == y
        return cls(int(t.size), int(np.sum(t & ~a)), int(np.sum(a & ~t)))

    @classmethod
    def from_dict(cls, d: Any) -> PairedCounts | None:
        """The counts a manifest holds, or None when absent or malformed (a run made before they existed)."""
        if not isinstance(d, dict):
            return None
        try:
            n, b, c = int(d["examples"]), int(d["teacher_only"]), int(d["artifact_only"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(n, b, c) if n > 0 and min(b, c) >= 0 and b + c <= n else None

    def to_dict(self) -> dict[str, int]:
        return {
            "examples": self.examples,
            "teacher_only": self.teacher_only,
            "artifact_only": self.artifact_only,
        }

    @property
    def drop(self) -> float:
        """Teacher accuracy minus artifact accuracy on these examples."""
        return (self.teacher_only - self.artifact_only) / self.examples

    @property
    def standard_error(self) -> float:
        """Standard error of ``drop`` (paired)."""
        n = self.examples
        var = (self.teacher_only + self.artifact_only) / n - self.drop**2
        return math.sqrt(max(var, 0.0) / n)

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Two-sided interval of the drop at ``confidence`` (0.95: 2.5 % on each side)."""
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        return self.drop - z * self.standard_error, self.drop + z * self.standard_error

    def upper_bound(self, confidence: float) -> float:
        """One-sided upper bound: the drop is at most this with probability ``confidence``."""
        return self.drop + NormalDist().inv_cdf(confidence) * self.standard_error
