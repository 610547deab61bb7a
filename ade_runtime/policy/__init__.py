"""The adaptive policy, shared by the live loop and by offline replay over traces."""

from ade_runtime.policy.budget import (
    BudgetLabel,
    GridPoint,
    budget_label,
    budget_levels,
    cost_unit,
    grid_points,
    level_index,
    pruned_nfe,
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
    "budget_label",
    "budget_levels",
    "cost_unit",
    "grid_points",
    "level_index",
    "outcome_dict",
    "preset",
    "pruned_nfe",
    "quantile_level",
    "replay_oracle",
    "replay_policy",
    "replay_record",
    "summarize",
]
