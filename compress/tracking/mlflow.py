"""``mlflow``: log a run to MLflow (an embedded SQLite store under the run directory by default).

Default store: ``sqlite:///<run_dir>/mlflow/mlflow.db`` with artifacts in
``<run_dir>/mlflow/artifacts`` (MLflow's plain-file store is in maintenance mode and refuses to
start without an opt-out, so the embedded default is SQLite); ``uri:`` names a server or another
store. One MLflow run per compress run, in experiment ``experiment`` (default the pipeline's
name), named after the pipeline. Parameters are the flattened resolved config (values cut at
MLflow's 6,000 characters), metrics the flattened stage metrics, history rows as steps, gates;
the report files are logged as artifacts. Needs ``pip install 'compress[tracking]'``
(``mlflow-skinny`` with ``sqlalchemy`` and ``alembic`` for the SQLite store).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from compress.errors import MissingDependency
from compress.tracking.base import Tracker, register_tracker

INSTALL_HINT = "pip install 'compress[tracking]'"
_MAX_PARAM = 6000


@register_tracker("mlflow")
class MlflowTracker(Tracker):
    """One MLflow run, written through ``MlflowClient`` (no global active-run state)."""

    @classmethod
    def missing_dependencies(cls, cfg: Any) -> list[str]:
        """MLflow itself; sqlalchemy and alembic too for the embedded store (no ``uri``)."""
        if importlib.util.find_spec("mlflow") is None:
            return [f"backend 'mlflow' needs MLflow: {INSTALL_HINT}"]
        if cfg.uri is None and (
            importlib.util.find_spec("sqlalchemy") is None or importlib.util.find_spec("alembic") is None
        ):
            return [f"the embedded MLflow store (SQLite) needs sqlalchemy and alembic: {INSTALL_HINT}"]
        return []

    def __init__(self, cfg: Any, run_dir: Path, run_name: str) -> None:
        super().__init__(cfg, run_dir, run_name)
        for missing in self.missing_dependencies(cfg):
            raise MissingDependency(f"tracking: {missing}")
        local = self.run_dir.resolve() / "mlflow"
        self.uri = cfg.uri or f"sqlite:///{local / 'mlflow.db'}"
        if cfg.uri is None:
            local.mkdir(parents=True, exist_ok=True)
        for name in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter on every new store
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp_name = cfg.experiment or run_name
        exp = self.client.get_experiment_by_name(exp_name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            art = (local / "artifacts").as_uri() if cfg.uri is None else None
            exp_id = self.client.create_experiment(exp_name, artifact_location=art)
        self.run_id = self.client.create_run(
            exp_id, run_name=run_name, tags={"compress.run_dir": str(self.run_dir)}
        ).info.run_id

    def _log_params_impl(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _log_metrics_impl(self, scalars: dict[str, float], series: list[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, 0) for k, v in scalars.items()] + [
            Metric(k, v, now, s) for k, s, v in series
        ]
        for i in range(0, len(items), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _log_files_impl(self, files: list[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def _close_impl(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
