"""Structured pruning: remove whole attention heads and FFN neurons to a MAC target.

``prune_(model, PruneConfig(...), example_inputs=...)`` prunes in place with
torch-pruning's dependency graph and returns a ``PruneReport``. The pruned
model is a plain smaller model of its family (``model_spec`` describes it).
"""

from compress.prune._criteria import CRITERIA as CRITERIA
from compress.prune.api import PruneReport as PruneReport
from compress.prune.api import PruneStep as PruneStep
from compress.prune.api import RecoverFn as RecoverFn
from compress.prune.api import ScoreFn as ScoreFn
from compress.prune.api import prune_ as prune_
from compress.prune.config import MacsTargetConfig as MacsTargetConfig
from compress.prune.config import PruneConfig as PruneConfig


def list_criteria(pattern: str = "*") -> list[str]:
    """Names of the registered importance criteria matching a glob ``pattern``."""
    return CRITERIA.names(pattern)
