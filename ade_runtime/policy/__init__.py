"""The run-time policy: its config, the per-request session (the decisions), the attempt driver and the
budget levels. The live loop runs it over a backbone; offline replay (``ade_runtime.offline``) runs the
same driver over logged traces."""

from ade_runtime.policy.budget import (
    BudgetLabel,
    GridPoint,
    LoopLabel,
    budget_label,
    budget_levels,
    cost_unit,
    grid_points,
    level_index,
    loop_label,
    loop_levels,
    loop_order,
    pruned_nfe,
    quantile_level,
)
from ade_runtime.policy.config import POLICY_NAMES, PolicyConfig, preset
from ade_runtime.policy.driver import GridSession, drive
from ade_runtime.policy.session import Decision, Key, PolicySession, Step

__all__ = [
    "POLICY_NAMES",
    "BudgetLabel",
    "Decision",
    "GridSession",
    "GridPoint",
    "Key",
    "PolicyConfig",
    "PolicySession",
    "Step",
    "LoopLabel",
    "budget_label",
    "loop_label",
    "loop_levels",
    "loop_order",
    "budget_levels",
    "drive",
    "cost_unit",
    "grid_points",
    "level_index",
    "preset",
    "pruned_nfe",
    "quantile_level",
]
