"""One driver, two sources: per policy family, the live loop and replay take the same decisions.

The live loop (``LiveSource``) and replay (``LoggedSource``) are the same ``policy.driver.drive``; these
tests pin that each decision family (stop, abandon, refine, fixed rounds, prune) comes out the same,
decision by decision, on the same requests (CARD budgets, the cascade and the deadline have their own
live = replay tests: test_live_replay_agree, test_verifier_cascade, test_deadline).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers.grid import judged_grid
from helpers.predictors import calibrator

from ade_runtime.loop import AdaptiveEditor
from ade_runtime.offline import replay_record
from ade_runtime.offline.signals import record_signals
from ade_runtime.policy import PolicyConfig
from ade_runtime.policy.driver import GridSession, drive
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.testbed import SyntheticBackbone, online_scores
from ade_runtime.testbed.costs import get_cost

BASE = PolicyConfig(
    tau_high=0.5, tau_low=0.25, s_max=2, card_quantile=0.8, max_candidates=3, default_budget=4, use_card=False
)
FAMILIES = {  # family -> (policy, the decision reason it must exercise)
    "stop": (replace(BASE, refine=False), "confidence>=tau_high"),
    "abandon": (replace(BASE, tau_low=0.49), "confidence<tau_low"),
    "refine": (replace(BASE, tau_low=0.0, tau_high=0.99), "tau_low<=confidence<tau_high"),
    "fixed_rounds": (replace(BASE, fixed_rounds=True, early_stop=False), "fixed_rounds"),
    "prune": (replace(BASE, prune_threshold=1.0), "preview"),  # every preview scores below 1: pruned
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return judged_grid(
        tmp_path_factory.mktemp("grid"), n=10, seed=23, prefix="d", candidates=3, rounds=2, levels=[0],
        scorer=online_scores,
    )  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_policy_family_decides_the_same_live_and_in_replay(grid, family):
    requests, records = grid
    policy, reason = FAMILIES[family]
    preds = Predictors(calibrator=calibrator(bias=-4.0, weight=12.0, policy=policy))
    editor = AdaptiveEditor(SyntheticBackbone(), preds, policy=policy, scorer=online_scores, seed=0)
    cost = get_cost("bagel")
    reasons = set()
    for req in requests:
        live = editor.edit(req)
        rec = records[req.id]
        sig = record_signals(rec, preds.calibrator)
        # the collected grid has no preview scores: every preview gets a confidence below the threshold
        preview = {a.key: 0.5 for a in rec.attempts} if policy.prune_threshold is not None else None
        rep = replay_record(
            rec,
            policy,
            sig.confidence,
            preview=preview,
            first_stage=sig.first_stage,
            preview_step=cost.preview_step * cost.nfe_per_step,
        )
        assert live.decisions == rep.decisions, req.id
        assert (live.chosen, live.stop_reason, live.nfe) == (rep.chosen, rep.stop_reason, rep.nfe), req.id
        reasons |= {d["reason"] for d in live.decisions}
    assert reason in reasons, f"the sample never exercised {family!r} ({sorted(reasons)})"


def test_the_grid_session_visits_every_attempt_in_trace_order_and_ends_a_broken_chain():
    class Source:  # generation fails on candidate 1, round 0: its round 1 is not run
        verifies = True

        def __init__(self):
            self.run, self.verified = [], []

        def generate(self, step, keep):
            from ade_runtime.policy.driver import Generated

            self.run.append(step.key)
            return Generated(failed=step.key == (1, 0, 0))

        def judge(self, step):
            from ade_runtime.policy.driver import Judged

            return Judged(None)

        def verify(self, step):
            self.verified.append(step.key)
            return None

        def select_value(self, step, confidence):
            return confidence

        def seconds(self, step):
            return 0.0

    src = Source()
    assert drive(GridSession(2, 2, [0, 8]), src) is None
    assert src.run == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0, 8), (0, 1, 8), (1, 0, 8), (1, 1, 8)]
    assert src.verified == [k for k in src.run if k != (1, 0, 0)]  # every finished attempt is verified
