"""The TI convergence benchmark's summary of kept runs (benchmarks/ti_convergence.py): what it reports must
follow from the runs, including when some runs are missing."""

from __future__ import annotations

import argparse

import pytest

from tests._helpers.benchmarks import import_benchmark


@pytest.fixture(scope="module")
def ti():
    yield from import_benchmark("ti_convergence")


def _run(method: str, seed: int, curve: list[float], prec: str = "w2a8") -> dict:
    return {
        "precision": prec,
        "method": method,
        "seed": seed,
        "curve": [[40 * i, a] for i, a in enumerate(curve)],
        "final_val": curve[-1],
        "final_test": curve[-1],
        "layer_mse": [0.1, 0.2],
        "seconds": 1.0,
    }


def _args(methods: list[str], precisions: tuple[str, ...] = ("w2a8",)) -> argparse.Namespace:
    return argparse.Namespace(precisions=list(precisions), methods=methods)


def test_reach_and_within_half_a_point_come_from_the_mean_curves(ti):
    runs = [
        _run("kd_qat", 0, [0.60, 0.70, 0.795, 0.80]),
        _run("kd_qat", 1, [0.60, 0.70, 0.795, 0.80]),
        _run("ti_g", 0, [0.60, 0.797, 0.80, 0.80]),
    ]
    rows = ti._summarise(runs, _args(["kd_qat", "ti_g"]))["w2a8"]["methods"]
    assert rows["kd_qat"]["seeds"] == [0, 1]
    assert rows["ti_g"]["seeds"] == [0]
    assert rows["kd_qat"]["reach_step"] == 120
    assert rows["ti_g"]["reach_step"] == 80
    assert rows["ti_g"]["speedup"] == pytest.approx(1.5)
    # within 0.005 of 0.80: KD-QAT at step 80 (0.795), TI-G at step 40 (0.797)
    assert rows["kd_qat"]["near_step"] == 80
    assert rows["ti_g"]["near_step"] == 40
    assert rows["ti_g"]["near_speedup"] == pytest.approx(2.0)


def test_a_method_without_runs_is_left_out_not_an_error(ti):
    runs = [_run("kd_qat", 0, [0.6, 0.8]), _run("kd_qat", 0, [0.6, 0.8], prec="w8a8")]
    summary = ti._summarise(runs, _args(["kd_qat", "ti_o", "ti_m"], ("w2a8", "w8a8")))
    assert list(summary["w2a8"]["methods"]) == ["kd_qat"]
    assert list(summary["w8a8"]["methods"]) == ["kd_qat"]


def test_speed_up_at_step_zero(ti):
    assert ti._speedup(0, 0) == 1.0  # both at the end after calibration alone
    assert ti._speedup(120, 0) is None
    assert ti._speedup(120, 60) == 2.0
    assert ti._speedup(None, 60) is None
    assert ti._speedup(120, None) is None
