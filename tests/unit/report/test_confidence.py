"""The accuracy drop's paired counts and confidence interval (compress.report.confidence)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from compress.report import PairedCounts


def test_counts_and_drop_match_the_two_accuracies() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    teacher = np.array([0, 1, 2, 3, 4, 0, 0, 7])  # right on 6
    artifact = np.array([0, 1, 0, 0, 4, 5, 0, 0])  # right on 4
    p = PairedCounts.of(labels, teacher, artifact)
    assert p == PairedCounts(examples=8, teacher_only=3, artifact_only=1)
    assert p.drop == pytest.approx(np.mean(teacher == labels) - np.mean(artifact == labels))


def test_standard_error_is_that_of_the_per_example_difference() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 3000)
    teacher = np.where(rng.random(3000) < 0.8, labels, (labels + 1) % 5)
    artifact = np.where(rng.random(3000) < 0.9, teacher, (teacher + 2) % 5)
    p = PairedCounts.of(labels, teacher, artifact)
    d = (teacher == labels).astype(float) - (artifact == labels)
    assert p.drop == pytest.approx(d.mean())
    assert p.standard_error == pytest.approx(d.std(ddof=0) / np.sqrt(d.size))
    low, high = p.interval(0.95)
    assert low < p.drop < high
    # on 3,000 examples the score interval is close to the Wald one (drop -+ 1.96 se), not equal to it
    assert (high - low) / 2 == pytest.approx(1.959964 * p.standard_error, rel=0.02)
    assert p.drop < p.upper_bound(0.95) < high


@pytest.mark.parametrize(("b", "c"), [(373, 299), (475, 366), (560, 459), (300, 280)])
def test_on_a_large_test_set_the_score_and_wald_bounds_differ_by_under_a_hundredth_of_a_point(
    b: int, c: int
) -> None:
    # counts like those of the WordNet runs (11,767 examples, 5-9 % disagreement)
    p = PairedCounts(11767, b, c)
    low, high = p.interval(0.95)
    half = 1.959964 * p.standard_error
    assert abs(low - (p.drop - half)) < 1e-4
    assert abs(high - (p.drop + half)) < 1e-4


def test_tango_interval_matches_the_published_example() -> None:
    # Fagerland, Lydersen & Laake 2014 (BMC Med Res Methodol 14:116), airway data: b = 1, c = 7, n = 21;
    # their Tango asymptotic score interval is -0.517 to -0.026
    low, high = PairedCounts(21, 1, 7).interval(0.95)
    assert low == pytest.approx(-0.517, abs=5e-4)
    assert high == pytest.approx(-0.026, abs=5e-4)


@pytest.mark.parametrize(("n", "b", "c"), [(21, 1, 7), (400, 12, 3), (11767, 373, 299), (50, 0, 4)])
def test_the_bounds_are_where_the_score_test_just_rejects(n: int, b: int, c: int) -> None:
    p = PairedCounts(n, b, c)
    low, high = p.interval(0.95)
    assert p.score(low) == pytest.approx(1.959964, abs=1e-4)
    assert p.score(high) == pytest.approx(-1.959964, abs=1e-4)
    assert p.score(p.upper_bound(0.95)) == pytest.approx(-1.644854, abs=1e-4)
    assert -1 < low < p.drop < high < 1


def _exact_coverage(
    n: int, p12: float, p21: float, interval: Callable[[int, int], tuple[float, float]]
) -> float:
    """Probability, over all possible test sets of n examples, that ``interval(b, c)`` holds the true drop."""
    truth, total = p12 - p21, 0.0
    logs = (np.log(p12), np.log(p21), np.log(1 - p12 - p21))
    for b in range(n + 1):
        for c in range(n - b + 1):
            lp = (math.lgamma(n + 1) - math.lgamma(b + 1) - math.lgamma(c + 1) - math.lgamma(n - b - c + 1)
                  + b * logs[0] + c * logs[1] + (n - b - c) * logs[2])  # fmt: skip
            if lp < -40:
                continue
            low, high = interval(b, c)
            total += math.exp(lp) * (low <= truth <= high)
    return total


def test_the_score_interval_keeps_its_coverage_where_wald_loses_it() -> None:
    # 200 examples, the teacher alone right on 2 %, the artifact alone on 0.5 %: true drop 1.5 points.
    # Exact coverage over all test sets (no sampling): Tango's is near 95 %, Wald's under 90 %.
    def score(b: int, c: int) -> tuple[float, float]:
        return PairedCounts(200, b, c).interval(0.95)

    def wald(b: int, c: int) -> tuple[float, float]:
        p = PairedCounts(200, b, c)
        return p.drop - 1.959964 * p.standard_error, p.drop + 1.959964 * p.standard_error

    assert 0.93 <= _exact_coverage(200, 0.02, 0.005, score) <= 0.97
    assert _exact_coverage(200, 0.02, 0.005, wald) < 0.91


def test_the_one_sided_bound_holds_the_true_drop_at_its_level() -> None:
    # what `confidence: 0.95` on the accuracy gate relies on: P(true drop <= bound) >= about 95 %
    def upper(b: int, c: int) -> tuple[float, float]:
        return -1.0, PairedCounts(300, b, c).upper_bound(0.95)

    assert 0.93 <= _exact_coverage(300, 0.03, 0.01, upper) <= 0.97


def test_no_disagreement_still_leaves_an_interval_that_shrinks_with_the_examples() -> None:
    small, large = PairedCounts(100, 0, 0), PairedCounts(10000, 0, 0)
    assert small.drop == 0
    assert small.standard_error == 0  # Wald would say [0, 0]
    low, high = small.interval()
    assert low == pytest.approx(-high)
    assert 0.03 < high < 0.04  # about 3.7 % on 100 examples
    assert 0 < large.interval()[1] < high / 50
    assert 0 < large.upper_bound(0.95) < large.interval()[1]


def test_every_example_one_sided_reaches_the_end_of_the_range() -> None:
    low, high = PairedCounts(10, 10, 0).interval()
    assert high == 1.0
    assert 0 < low < 1
    assert PairedCounts(10, 0, 10).interval()[0] == -1.0


@pytest.mark.parametrize(
    "d",
    [None, {}, {"examples": 10}, {"examples": 0, "teacher_only": 0, "artifact_only": 0},
     {"examples": 10, "teacher_only": 8, "artifact_only": 5},
     {"examples": "x", "teacher_only": 1, "artifact_only": 1}],
)  # fmt: skip
def test_malformed_or_missing_counts_read_as_none(d: object) -> None:
    assert PairedCounts.from_dict(d) is None


def test_round_trip_through_a_manifest_dict() -> None:
    p = PairedCounts(11766, 500, 380)
    assert PairedCounts.from_dict(p.to_dict()) == p


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        PairedCounts.of(np.zeros(3), np.zeros(3), np.zeros(4))
