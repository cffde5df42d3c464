"""Latency of a loaded ``Session``: warm-up, rotated inputs, per-call timings, percentiles.

What is measured: wall-clock time of one ``session.run(inputs)`` call followed by
``session.synchronize()``, host arrays in and host arrays out, so it includes the
runtime's input/output copies and the Session's argument checks (a few
microseconds). One call per timed iteration, one batch size at a time.

How (MLPerf-style practice, see METHODS.md §5):

* ``warmup`` untimed calls per batch size and repeat first (lazy allocation,
  kernel selection, caches);
* ``make_inputs(batch)`` is called ``input_sets`` times per batch size and the
  timed calls cycle through those sets, so the runtime does not see one buffer
  over and over (all sets are built before timing starts);
* percentiles by linear interpolation between the closest ranks (NumPy's
  default), over all timed calls of all repeats; ``std`` is the population
  standard deviation; throughput is ``batch / mean seconds``;
* with ``repeats > 1`` the whole sweep over batch sizes runs again and
  ``p50_spread_ms`` is max - min of the per-repeat medians (run-to-run noise).

Clocks (``LatencyStats.clock`` records which one timed the calls):

* ``perf_counter``: host wall clock read before ``run`` and after ``synchronize``
  (CPU sessions, and any session when CUDA is absent);
* ``cuda_event``: a pair of ``torch.cuda.Event(enable_timing=True)`` recorded on the
  CUDA stream current when timing starts, before ``run`` and after ``synchronize`` (the
  stream is looked up once: ``torch.cuda.current_stream()`` costs about 8 us of host time,
  measured on an H100, which would otherwise fall inside both ends of every interval); ``elapsed_time``
  is read once all timed calls are done, so reading the clock never stalls the
  loop. Used for sessions on ``cuda`` (``clock="auto"``). Because the session has
  synchronized before the end event is recorded, the interval covers the whole
  call (host-to-device copy, kernels on any stream, device-to-host copy), timed
  by the GPU's own clock instead of the host's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from compress.errors import BadInputError


class _Runnable(Protocol):
    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class LatencyStats:
    """Latency distribution of one model at one batch size (milliseconds per call).

    Attributes:
        batch: Examples per call.
        p50_ms: Median.
        p90_ms: 90th percentile (MLPerf SingleStream's metric).
        p95_ms: 95th percentile.
        p99_ms: 99th percentile.
        mean_ms: Mean.
        std_ms: Population standard deviation.
        min_ms: Fastest call.
        max_ms: Slowest call.
        throughput_per_s: Examples per second, ``batch / (mean_ms / 1000)``.
        iterations: Timed calls per repeat.
        repeats: Independent repetitions pooled into these numbers.
        p50_spread_ms: Max minus min of the per-repeat medians (0 with one repeat).
    """

    batch: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_per_s: float
    iterations: int
    repeats: int
    p50_spread_ms: float
    clock: str = "perf_counter"

    @classmethod
    def from_samples(
        cls, batch: int, samples_ms: Sequence[Sequence[float]], *, clock: str = "perf_counter"
    ) -> LatencyStats:
        """Summarise per-call times, one sequence per repeat.

        Args:
            batch: Examples per call.
            samples_ms: ``samples_ms[r][i]`` is call ``i`` of repeat ``r``, in ms; every
                repeat has the same, non-zero number of calls.
            clock: Which clock produced the samples (``perf_counter`` or ``cuda_event``).

        Example:
            >>> s = LatencyStats.from_samples(4, [[1.0, 2.0, 3.0, 4.0]])
            >>> s.p50_ms, s.throughput_per_s
            (2.5, 1600.0)
        """
        per_repeat = [np.asarray(r, dtype=np.float64) for r in samples_ms]
        if not per_repeat or any(r.size == 0 or r.size != per_repeat[0].size for r in per_repeat):
            raise BadInputError(
                f"latency samples must be one non-empty, equal-length list per repeat; "
                f"got lengths {[r.size for r in per_repeat]}"
            )
        allv = np.concatenate(per_repeat)
        p50, p90, p95, p99 = (float(v) for v in np.percentile(allv, [50, 90, 95, 99]))
        medians = [float(np.median(r)) for r in per_repeat]
        mean = float(allv.mean())
        return cls(
            batch=batch,
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            mean_ms=mean,
            std_ms=float(allv.std()),
            min_ms=float(allv.min()),
            max_ms=float(allv.max()),
            throughput_per_s=batch / (mean / 1000.0) if mean > 0 else float("inf"),
            iterations=int(per_repeat[0].size),
            repeats=len(per_repeat),
            p50_spread_ms=max(medians) - min(medians),
            clock=clock,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form read by the gates and the report (the batch size is the key outside)."""
        return {
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "throughput_per_s": self.throughput_per_s,
            "iterations": self.iterations,
            "repeats": self.repeats,
            "p50_spread_ms": self.p50_spread_ms,
            "clock": self.clock,
        }


def measure_latency(
    session: _Runnable,
    make_inputs: Callable[[int], Mapping[str, np.ndarray]],
    *,
    batch_sizes: Sequence[int],
    warmup: int,
    iterations: int,
    repeats: int = 1,
    input_sets: int = 4,
    timer: Callable[[], float] = time.perf_counter,
    clock: str = "auto",
) -> dict[int, LatencyStats]:
    """Time ``session.run`` at each batch size.

    Args:
        session: A loaded ``Session`` (anything with ``run`` and ``synchronize``).
        make_inputs: ``make_inputs(batch)`` returns one input dict for that batch
            size; it is called ``input_sets`` times per batch size and should return a
            different batch each time (e.g. random rows of the evaluation split).
        batch_sizes: Batch sizes to time, in order; duplicates are timed once.
        warmup: Untimed calls per batch size (and per repeat) before timing.
        iterations: Timed calls per batch size and repeat.
        repeats: Independent sweeps over all batch sizes; their medians give the spread.
        input_sets: How many different input dicts to cycle through.
        timer: Clock in seconds; injectable so tests can use a fake one. It is read
            exactly twice per timed call (before ``run``, after ``synchronize``) and
            never during warm-up. Used when the clock is ``perf_counter``.
        clock: ``auto`` (CUDA events when ``session.device`` is ``cuda`` and CUDA is
            available, else ``perf_counter``), ``perf_counter`` or ``cuda_event``.

    Returns:
        ``{batch: LatencyStats}`` in ``batch_sizes`` order.

    Raises:
        BadInputError: Empty or non-positive ``batch_sizes``, ``iterations < 1``,
            ``warmup < 0``, ``repeats < 1``, ``input_sets < 1``, an unknown ``clock``
            or ``cuda_event`` without CUDA.

    Example:
        >>> stats = measure_latency(sess, lambda b: {"input": x[:b]},
        ...                         batch_sizes=[1, 32], warmup=20, iterations=200)  # doctest: +SKIP
        >>> stats[32].to_dict()["p95_ms"]  # doctest: +SKIP
        0.84
    """
    sizes = list(dict.fromkeys(batch_sizes))
    problems = []
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        problems.append(f"batch_sizes must be a non-empty list of positive integers, got {list(batch_sizes)}")
    if iterations < 1:
        problems.append(f"iterations must be >= 1, got {iterations}")
    if warmup < 0:
        problems.append(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        problems.append(f"repeats must be >= 1, got {repeats}")
    if input_sets < 1:
        problems.append(f"input_sets must be >= 1, got {input_sets}")
    if clock not in CLOCKS:
        problems.append(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if problems:
        raise BadInputError("measure_latency: " + "; ".join(problems))

    used = resolve_clock(clock, getattr(session, "device", "cpu"))
    sets = {b: [make_inputs(b) for _ in range(input_sets)] for b in sizes}
    samples: dict[int, list[list[float]]] = {b: [] for b in sizes}
    for _ in range(repeats):
        for b in sizes:
            feeds = sets[b]
            n = len(feeds)
            for i in range(warmup):
                session.run(feeds[i % n])
            session.synchronize()
            if used == "cuda_event":
                times = _time_cuda_events(session, feeds, iterations)
            else:
                times = [0.0] * iterations
                for i in range(iterations):
                    feed = feeds[i % n]
                    t0 = timer()
                    session.run(feed)
                    session.synchronize()
                    times[i] = (timer() - t0) * 1000.0
            samples[b].append(times)
    return {b: LatencyStats.from_samples(b, samples[b], clock=used) for b in sizes}


CLOCKS = ("auto", "perf_counter", "cuda_event")


def resolve_clock(clock: str, device: str) -> str:
    """The clock ``measure_latency`` uses for a session on ``device`` (see the module docstring).

    Raises:
        BadInputError: ``cuda_event`` asked for where CUDA is not available.

    Example:
        >>> resolve_clock("auto", "cpu")
        'perf_counter'
    """
    if clock == "perf_counter" or (clock == "auto" and device != "cuda"):
        return "perf_counter"
    import torch

    if not torch.cuda.is_available():
        if clock == "cuda_event":
            raise BadInputError(
                "measure_latency: clock 'cuda_event' needs CUDA, and torch sees no CUDA device"
            )
        return "perf_counter"
    return "cuda_event"


def _time_cuda_events(
    session: _Runnable, feeds: Sequence[Mapping[str, np.ndarray]], iterations: int
) -> list[float]:
    import torch

    n = len(feeds)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    stream = torch.cuda.current_stream()
    for i in range(iterations):
        starts[i].record(stream)
        session.run(feeds[i % n])
        session.synchronize()
        ends[i].record(stream)
    torch.cuda.synchronize()
    return [float(s.elapsed_time(e)) for s, e in zip(starts, ends, strict=True)]
