"""Offline work over judged trace datasets, no GPU needed: exact replay of the policies over logged
attempts (``replay``: the live loop's driver over a ``LoggedSource``), the signals of logged attempts
(``signals``), paired bootstrap intervals (``intervals``), compute-quality curves (``curves``) and the
evaluation ``ade-replay`` and the bench print (``evaluate``).

The CLIs (``ade-replay``) and the bench call this package; it never imports a CLI.
"""

from ade_runtime.offline.replay import (
    LoggedSource,
    Outcome,
    Overhead,
    ReplayError,
    oracle_refinements,
    outcome_dict,
    refinement_feedback,
    replay_oracle,
    replay_policy,
    replay_record,
    replay_signals,
    summarize,
)
from ade_runtime.offline.signals import AttemptSignals, record_signals

__all__ = [
    "AttemptSignals",
    "LoggedSource",
    "Outcome",
    "Overhead",
    "ReplayError",
    "oracle_refinements",
    "outcome_dict",
    "refinement_feedback",
    "record_signals",
    "replay_oracle",
    "replay_policy",
    "replay_record",
    "replay_signals",
    "summarize",
]
