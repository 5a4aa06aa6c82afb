"""What can be pruned, how far, and why not: one concern, four modules.

- ``prunable``: :func:`analyse` decides which channel groups may be pruned (tracing, static rules,
  then the trial), each skipped one with a reason (:class:`Skip`).
- ``trial``: the zeroed-channel trial behind it (removing zeroed channels must change nothing).
- ``check``: :func:`check_model`, what ``rtdetr-prune check`` prints: shares, max speed-up, advice.
- ``parts``: :func:`~rtdetr_prune.pruning.analysis.parts.restrict`, the optional decoder parts turned on or off.
"""

from rtdetr_prune.pruning.analysis.check import check_model, format_check
from rtdetr_prune.pruning.analysis.prunable import KINDS, Plan, Skip, analyse

__all__ = ["KINDS", "Plan", "Skip", "analyse", "check_model", "format_check"]
