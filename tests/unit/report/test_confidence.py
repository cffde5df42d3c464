"""The accuracy drop's paired counts and confidence interval (compress.report.confidence)."""

from __future__ import annotations

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
    assert (high - low) / 2 == pytest.approx(1.959964 * p.standard_error, rel=1e-5)
    assert p.upper_bound(0.95) == pytest.approx(p.drop + 1.644854 * p.standard_error, rel=1e-5)
    assert p.drop < p.upper_bound(0.95) < high


def test_the_95_percent_interval_covers_the_true_drop_about_95_percent_of_the_time() -> None:
    # teacher-only 6 %, artifact-only 4 %: true drop 2 points; 400 simulated test sets of 2,000 examples
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        b, c, _rest = rng.multinomial(2000, [0.06, 0.04, 0.90])
        low, high = PairedCounts(2000, int(b), int(c)).interval(0.95)
        covered += low <= 0.02 <= high
    assert 0.91 <= covered / 400 <= 0.99


def test_no_disagreement_gives_a_zero_width_interval() -> None:
    p = PairedCounts(100, 0, 0)
    assert p.drop == 0
    assert p.standard_error == 0
    assert p.interval() == (0.0, 0.0)


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
