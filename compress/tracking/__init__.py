"""Experiment tracking (optional, off by default): MLflow or TensorBoard, one file per backend.

``open_tracker(cfg, run_dir, run_name=..., params=...)`` returns a started ``Tracker`` (a no-op
one when tracking is off); the runner calls ``log_stage`` and ``log_gates`` and ``close``.
Importing this package registers the built-in backends without importing mlflow or tensorboard.
The ``tracking:`` config is ``compress.config.schema.TrackingConfig``.
"""

from compress.tracking import mlflow as _mlflow  # noqa: F401  (registers 'mlflow'; imports mlflow lazily)
from compress.tracking import tensorboard as _tensorboard  # noqa: F401  (registers 'tensorboard')
from compress.tracking.base import TRACKERS as TRACKERS
from compress.tracking.base import NullTracker as NullTracker
from compress.tracking.base import Tracker as Tracker
from compress.tracking.base import open_tracker as open_tracker
from compress.tracking.base import register_tracker as register_tracker
