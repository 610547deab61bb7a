"""The adaptive policy, shared by the live loop and by offline replay over traces."""

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
    quantile_level,
)
from ade_runtime.policy.config import POLICY_NAMES, PolicyConfig, preset
from ade_runtime.policy.replay import (
    Outcome,
    Overhead,
    ReplayError,
    outcome_dict,
    replay_oracle,
    replay_policy,
    replay_record,
    summarize,
)
from ade_runtime.policy.session import Decision, Key, PolicySession, Step

__all__ = [
    "POLICY_NAMES",
    "BudgetLabel",
    "Decision",
    "GridPoint",
    "Key",
    "Outcome",
    "Overhead",
    "PolicyConfig",
    "PolicySession",
    "ReplayError",
    "Step",
    "LoopLabel",
    "budget_label",
    "loop_label",
    "loop_levels",
    "loop_order",
    "budget_levels",
    "cost_unit",
    "grid_points",
    "level_index",
    "outcome_dict",
    "preset",
    "quantile_level",
    "replay_oracle",
    "replay_policy",
    "replay_record",
    "summarize",
]
