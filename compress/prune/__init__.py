"""Structured pruning: remove whole attention heads, FFN neurons, CNN channels and layers to a target.

``prune_(model, PruneConfig(...), example_inputs=...)`` prunes in place with
torch-pruning's dependency graph and returns a ``PruneReport``. The pruned
model is a plain smaller model of its family (``model_spec`` describes it).
Guide: docs/pruning.md.
"""

from compress.prune._criteria import CRITERIA as CRITERIA
from compress.prune._criteria import Criterion as Criterion
from compress.prune._criteria import register_criterion as register_criterion
from compress.prune.api import LatencyBudgetError as LatencyBudgetError
from compress.prune.api import LatencyFn as LatencyFn
from compress.prune.api import PruneReport as PruneReport
from compress.prune.api import PruneStep as PruneStep
from compress.prune.api import RecoverFn as RecoverFn
from compress.prune.api import ScoreFn as ScoreFn
from compress.prune.api import prune_ as prune_
from compress.prune.config import LatencyBudgetConfig as LatencyBudgetConfig
from compress.prune.config import LayerDropConfig as LayerDropConfig
from compress.prune.config import MacsTargetConfig as MacsTargetConfig
from compress.prune.config import PruneConfig as PruneConfig
from compress.prune.config import PruneTargetConfig as PruneTargetConfig


def list_criteria(pattern: str = "*") -> list[str]:
    """Names of the registered importance criteria matching a glob ``pattern``."""
    return CRITERIA.names(pattern)
