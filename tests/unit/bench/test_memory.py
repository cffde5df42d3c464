"""rss_mb and measure_memory on real allocations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.bench import measure_memory, rss_mb
from compress.bench import memory as memory_mod

_64MB = 64_000_000


def _vmrss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_rss_matches_proc_status() -> None:
    assert rss_mb() == pytest.approx(_vmrss_mb(), abs=2.0)


def test_kept_allocation_shows_in_delta() -> None:
    keep: list[np.ndarray] = []
    m = measure_memory(lambda: keep.append(np.ones(_64MB // 8)))  # ones() touches every page
    assert set(m) == {"rss_delta_mb", "peak_rss_mb"}
    assert 55 <= m["rss_delta_mb"] <= 80
    assert m["peak_rss_mb"] >= rss_mb() - 1


@pytest.mark.skipif(not memory_mod._reset_peak(), reason="kernel high-water mark cannot be reset here")
def test_peak_covers_transient_allocation() -> None:
    before = rss_mb()
    m = measure_memory(lambda: float(np.ones(_64MB // 8).sum()))  # allocated and freed inside fn
    assert m["rss_delta_mb"] < 20
    assert m["peak_rss_mb"] >= before + 55


def test_falls_back_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc")

    monkeypatch.setattr(memory_mod, "open", no_proc, raising=False)
    assert rss_mb() > 0
    m = measure_memory(lambda: None)
    assert m["peak_rss_mb"] > 0
