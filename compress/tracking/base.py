"""The ``Tracker`` interface: what the runner tells an experiment tracker, and the registry of backends.

The runner makes four calls, whatever the backend: ``open_tracker`` (with the resolved pipeline
config as parameters) before the first stage, ``log_stage`` after each stage (run or cached),
``log_gates`` with the gate results, the verdict and the report files once they are written, and
``close``. Metrics are the stage's metrics flattened to ``<stage id>/<path>`` keys (numbers only;
``history`` rows become per-step series); gates log ``gate/<name>/passed`` (1 or 0) and
``gate/<name>/measured``.

Tracking is auxiliary: the run directory's reports are the record. A backend error is turned
into one warning (``stacklevel=2``) and the tracker stops logging; the run and its exit code are
unchanged. A backend whose package is missing fails at ``open_tracker`` with ``MissingDependency``
(exit 2) before any stage runs.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from compress._utils.registry import Registry

T = TypeVar("T", bound="type[Tracker]")

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metric_key(*parts: Any) -> str:
    """A metric/parameter key both MLflow and TensorBoard accept: parts joined by ``/``, other characters ``_``.

    Example:
        >>> metric_key("gate", "latency[cpu-ort]@32.p95_ms", "passed")
        'gate/latency_cpu-ort__32.p95_ms/passed'
    """
    return "/".join(_KEY_BAD.sub("_", str(p)) for p in parts)


def flatten_numbers(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[str, float]]:
    """``(key, value)`` for every int/float leaf of nested dicts (lists and ``history`` are skipped).

    Example:
        >>> dict(flatten_numbers({"model": {"params": 10, "name": "x"}, "ok": True}))
        {'model/params': 10.0}
    """
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "history":
                continue
            yield from flatten_numbers(v, (*prefix, k))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and prefix:
        if obj == obj and obj not in (float("inf"), float("-inf")):
            yield metric_key(*prefix), float(obj)


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a nested config as ``{"stages.0.distill.train.epochs": "15"}`` (values as strings)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten_params(v, f"{prefix}.{i}"))
    else:
        out[_KEY_BAD.sub("_", prefix)] = str(obj)
    return out


def history_series(history: Any) -> Iterator[tuple[str, int, float]]:
    """``(name, step, value)`` for every numeric field of every ``history`` row that has a ``step``."""
    if not isinstance(history, list):
        return
    for row in history:
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        for k, v in row.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            yield _KEY_BAD.sub("_", k), int(row["step"]), float(v)


class Tracker(ABC):
    """One run in an experiment tracker. Subclasses write the ``_impl`` methods."""

    name = ""

    def __init__(self, cfg: Any, run_dir: Path, run_name: str) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self._failed = False

    @classmethod
    def missing_dependencies(cls, cfg: Any) -> list[str]:
        """Packages the backend needs for ``cfg`` (a ``TrackingConfig``) that are not installed, with the fix.

        ``__init__`` raises ``MissingDependency`` on the first; ``load_config`` (so ``compress validate``
        and ``compress run`` before any work) reports them all at ``tracking:``.
        """
        del cfg
        return []

    def _guard(self, fn: Callable[[], None]) -> None:
        if self._failed:
            return
        try:
            fn()
        except Exception as e:  # a tracker's failure must not fail the release; say so once
            self._failed = True
            warnings.warn(
                f"tracking '{self.name}' failed ({type(e).__name__}: {e}); nothing more is logged to it, "
                "the run continues (its report files are the record)",
                stacklevel=3,
            )

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the resolved pipeline config (flattened)."""
        self._guard(lambda: self._log_params_impl(flatten_params(params)))

    def log_stage(self, stage_id: str, status: str, metrics: dict[str, Any]) -> None:
        """Log a finished (or cached) stage's metrics and its training history."""

        def go() -> None:
            scalars = {metric_key(stage_id, k): v for k, v in flatten_numbers(metrics)}
            scalars[metric_key(stage_id, "cached")] = 1.0 if status == "cached" else 0.0
            series = [
                (metric_key(stage_id, "history", n), s, v)
                for n, s, v in history_series(metrics.get("history"))
            ]
            self._log_metrics_impl(scalars, series)

        self._guard(go)

    def log_gates(self, gates: Sequence[dict[str, Any]], verdict: str, files: Sequence[Path]) -> None:
        """Log each gate (passed, measured), the verdict, and the report files that exist."""

        def go() -> None:
            scalars = {"verdict/pass": 1.0 if verdict == "pass" else 0.0}
            for g in gates:
                scalars[metric_key("gate", g["name"], "passed")] = 1.0 if g["passed"] else 0.0
                if isinstance(g.get("measured"), (int, float)) and not isinstance(g["measured"], bool):
                    scalars[metric_key("gate", g["name"], "measured")] = float(g["measured"])
            self._log_metrics_impl(scalars, [])
            self._log_files_impl([Path(f) for f in files if Path(f).is_file()])

        self._guard(go)

    def close(self, status: str = "FINISHED") -> None:
        """Finish the run in the tracker (``status``: ``FINISHED``, or ``FAILED`` when the run raised)."""
        self._guard(lambda: self._close_impl(status))

    @abstractmethod
    def _log_params_impl(self, params: dict[str, str]) -> None: ...

    @abstractmethod
    def _log_metrics_impl(self, scalars: dict[str, float], series: list[tuple[str, int, float]]) -> None: ...

    @abstractmethod
    def _log_files_impl(self, files: list[Path]) -> None: ...

    def _close_impl(self, status: str) -> None:  # noqa: B027  (optional hook)
        """Release the backend (optional); ``status`` as in ``close``."""


class NullTracker(Tracker):
    """Tracking off: every call does nothing."""

    name = "none"

    def _log_params_impl(self, params: dict[str, str]) -> None:
        pass

    def _log_metrics_impl(self, scalars: dict[str, float], series: list[tuple[str, int, float]]) -> None:
        pass

    def _log_files_impl(self, files: list[Path]) -> None:
        pass


TRACKERS: Registry[type[Tracker]] = Registry("tracking backend")
"""Registered tracking backends by name (``tracking: {backend: <name>}``)."""


def register_tracker(name: str) -> Callable[[T], T]:
    """Class decorator: register a ``Tracker`` subclass as backend ``name``."""

    def deco(cls: T) -> T:
        cls.name = name
        TRACKERS.register(name)(cls)
        return cls

    return deco


def open_tracker(cfg: Any, run_dir: Path, *, run_name: str, params: dict[str, Any] | None = None) -> Tracker:
    """The tracker ``cfg`` (a ``TrackingConfig`` or ``None``) asks for, started, with ``params`` logged.

    Args:
        cfg: ``tracking:`` of the pipeline; ``None``: a ``NullTracker``.
        run_dir: The run directory (default location of local stores).
        run_name: Name of the run in the tracker (the pipeline's name).
        params: The resolved pipeline config, logged as parameters.

    Returns:
        A started tracker.

    Raises:
        MissingDependency: The backend's package is not installed (the message says what to install).

    Example:
        >>> t = open_tracker(None, Path("runs/x"), run_name="x")
        >>> t.name
        'none'
    """
    if cfg is None:
        return NullTracker(None, run_dir, run_name)
    tracker = TRACKERS.get(cfg.backend)(cfg, run_dir, run_name)
    if params is not None:
        tracker.log_params(params)
    return tracker
