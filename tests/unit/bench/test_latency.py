"""measure_latency with a fake clock and a fake session: exact statistics, rotation, synchronisation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from compress.bench import LatencyStats, measure_latency
from compress.errors import BadInputError


class Clock:
    """A fake clock advanced by the fake session; counts reads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class FakeSession:
    """Each run takes ``durations[batch][k]`` ms (cycled); records what it was fed.

    With ``async_work=True`` ``run`` returns at once and the time passes in ``synchronize``,
    like a GPU runtime that only queues work.
    """

    def __init__(self, clock: Clock, durations: dict[int, list[float]], *, async_work: bool = False) -> None:
        self.clock = clock
        self.durations = durations
        self.async_work = async_work
        self.calls: dict[int, int] = {}
        self.fed: list[tuple[int, int]] = []
        self.pending = 0.0
        self.syncs = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = inputs["input"]
        batch = x.shape[0]
        k = self.calls.get(batch, 0)
        self.calls[batch] = k + 1
        self.fed.append((batch, int(x[0, 0])))
        d = self.durations[batch][k % len(self.durations[batch])] / 1000.0
        if self.async_work:
            self.pending += d
        else:
            self.clock.now += d
        return [x]

    def synchronize(self) -> None:
        self.syncs += 1
        self.clock.now += self.pending
        self.pending = 0.0


def _tagged_inputs():
    """make_inputs whose k-th call returns a batch filled with k, so the session can tell sets apart."""
    made: list[int] = []

    def make_inputs(batch: int) -> dict[str, np.ndarray]:
        made.append(batch)
        return {"input": np.full((batch, 3), len(made) - 1, dtype=np.float32)}

    return make_inputs, made


def test_exact_percentiles_with_fake_clock() -> None:
    clock = Clock()
    rng = np.random.default_rng(0)
    timed = [float(v) for v in rng.permutation(np.arange(1, 101))]  # 1..100 ms in random order
    warm = [500.0] * 5  # slow warm-up calls must not show up anywhere
    sess = FakeSession(clock, {4: warm + timed})
    make_inputs, _ = _tagged_inputs()
    stats = measure_latency(sess, make_inputs, batch_sizes=[4], warmup=5, iterations=100, timer=clock)
    s = stats[4]
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt((100**2 - 1) / 12))
    assert (s.min_ms, s.max_ms) == pytest.approx((1.0, 100.0))
    assert s.throughput_per_s == pytest.approx(4 / 0.0505)
    assert (s.iterations, s.repeats, s.p50_spread_ms) == (100, 1, 0.0)
    assert clock.reads == 200  # twice per timed call, never during warm-up


def test_inputs_are_rotated_per_batch_size() -> None:
    clock = Clock()
    sess = FakeSession(clock, {1: [1.0], 8: [2.0]})
    make_inputs, made = _tagged_inputs()
    measure_latency(
        sess, make_inputs, batch_sizes=[1, 8, 1], warmup=3, iterations=6, input_sets=4, timer=clock
    )
    assert made == [1, 1, 1, 1, 8, 8, 8, 8]  # duplicates timed once; sets built before timing
    fed_1 = [tag for b, tag in sess.fed if b == 1]
    fed_8 = [tag for b, tag in sess.fed if b == 8]
    assert fed_1 == [0, 1, 2] + [0, 1, 2, 3, 0, 1]
    assert fed_8 == [4, 5, 6] + [4, 5, 6, 7, 4, 5]


def test_clock_is_read_after_synchronize() -> None:
    clock = Clock()
    sess = FakeSession(clock, {2: [3.0, 5.0]}, async_work=True)
    make_inputs, _ = _tagged_inputs()
    s = measure_latency(sess, make_inputs, batch_sizes=[2], warmup=1, iterations=4, timer=clock)[2]
    # warm-up took call 0 (3 ms); timed calls are 5, 3, 5, 3 ms and only visible after synchronize()
    assert (s.min_ms, s.max_ms, s.mean_ms) == pytest.approx((3.0, 5.0, 4.0))
    assert sess.syncs >= 4


def test_repeats_pool_samples_and_report_spread() -> None:
    clock = Clock()
    sess = FakeSession(clock, {1: [1.0] * 10 + [3.0] * 10})  # repeat 0 sees 1 ms, repeat 1 sees 3 ms
    make_inputs, _ = _tagged_inputs()
    s = measure_latency(sess, make_inputs, batch_sizes=[1], warmup=0, iterations=10, repeats=2, timer=clock)[
        1
    ]
    assert (s.iterations, s.repeats) == (10, 2)
    assert s.p50_ms == pytest.approx(2.0)
    assert s.p50_spread_ms == pytest.approx(2.0)
    assert s.mean_ms == pytest.approx(2.0)


def test_to_dict_keys() -> None:
    d = LatencyStats.from_samples(2, [[1.0, 2.0]]).to_dict()
    assert list(d) == [
        "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
        "throughput_per_s", "iterations", "repeats", "p50_spread_ms", "clock",
    ]  # fmt: skip
    assert d.pop("clock") == "perf_counter"
    assert all(isinstance(v, (int, float)) for v in d.values())


def test_bad_arguments_are_all_reported() -> None:
    clock = Clock()
    with pytest.raises(
        BadInputError, match=r"batch_sizes must be .* got \[0\]; iterations must be >= 1, got 0"
    ):
        measure_latency(FakeSession(clock, {}), lambda b: {}, batch_sizes=[0], warmup=0, iterations=0)
    with pytest.raises(BadInputError, match="one non-empty, equal-length list per repeat"):
        LatencyStats.from_samples(1, [[1.0], []])
