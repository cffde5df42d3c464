"""``tensorboard``: write a run as TensorBoard event files (``<run_dir>/tensorboard/`` by default).

Through ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package:
``pip install 'compress[tracking]'``). Scalars: the flattened stage metrics at step 0, history rows
at their step, gates and the verdict; the resolved config as text (``config``); report files
are not copied (they sit in the run directory next to the event files). ``uri:`` is another
log folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from compress.errors import MissingDependency
from compress.tracking.base import Tracker, register_tracker

INSTALL_HINT = "pip install 'compress[tracking]'"


@register_tracker("tensorboard")
class TensorboardTracker(Tracker):
    """One TensorBoard log folder per compress run."""

    @classmethod
    def missing_dependencies(cls, cfg: Any) -> list[str]:
        """The ``tensorboard`` package (``torch.utils.tensorboard`` imports it)."""
        del cfg
        if importlib.util.find_spec("tensorboard") is None:
            return [f"backend 'tensorboard' needs the tensorboard package: {INSTALL_HINT}"]
        return []

    def __init__(self, cfg: Any, run_dir: Path, run_name: str) -> None:
        super().__init__(cfg, run_dir, run_name)
        for missing in self.missing_dependencies(cfg):
            raise MissingDependency(f"tracking: {missing}")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(cfg.uri) if cfg.uri else self.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def _log_params_impl(self, params: dict[str, str]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=1) + "\n```", 0)

    def _log_metrics_impl(self, scalars: dict[str, float], series: list[tuple[str, int, float]]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, 0)
        for k, s, v in series:
            self.writer.add_scalar(k, v, s)
        self.writer.flush()

    def _log_files_impl(self, files: list[Path]) -> None:
        self.writer.add_text("reports", "\n".join(str(f) for f in files), 0)

    def _close_impl(self, status: str) -> None:
        del status  # event files have no run status
        self.writer.close()
