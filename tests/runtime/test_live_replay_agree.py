"""Live and replay run the same policy over the same attempts: the same choice, NFE and score per request.

The testbed backbone is deterministic given (request, candidate, round, reasoning tokens, prompt, seed), so
the full attempt grid collected with ``ade-collect``'s ``run_grid`` holds exactly the attempts the live loop
samples. Replaying the policy over that grid must reproduce the live loop request by request.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers.grid import judged_grid
from helpers.predictors import calibrator, card

from ade_runtime.backbones.base import EditRequest
from ade_runtime.loop import AdaptiveEditor
from ade_runtime.offline import replay_signals
from ade_runtime.offline.signals import card_budget, record_signals
from ade_runtime.policy import PolicyConfig, pruned_nfe
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.testbed import SyntheticBackbone, World, judge_attempt, online_scores
from ade_runtime.testbed.costs import get_cost
from ade_runtime.testbed.imageio import make_image

N = 16
POLICY = PolicyConfig(
    tau_high=0.5, tau_low=0.25, s_max=2, card_quantile=0.8, max_candidates=4, default_budget=8
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """N fresh testbed requests, each with its full 4 x 2 x {0, 512} grid, judged exactly."""
    return judged_grid(
        tmp_path_factory.mktemp("grid"), n=N, seed=11, prefix="q", candidates=4, rounds=2,
        levels=[0, 512], scorer=online_scores,
    )  # fmt: skip


@pytest.mark.parametrize("use_card", [True, False])
def test_live_and_replay_agree_request_by_request(grid, use_card):
    requests, records = grid
    policy = replace(POLICY, use_card=use_card)
    # the untrained CARD puts most mass beyond the grid: give those requests 4 attempts, not 1
    preds = Predictors(
        card=card(beyond_budget=4), calibrator=calibrator(bias=-3.5, weight=12.0, policy=policy)
    )
    editor = AdaptiveEditor(SyntheticBackbone(), preds, scorer=online_scores, seed=0)
    stops, rounds, budgets = set(), set(), set()
    for req in requests:
        live = editor.edit(req)
        stops.add(live.stop_reason)
        rounds |= {a.step.round for a in live.attempts}
        budgets.add(live.budget)
        rec = records[req.id]
        plan = (
            card_budget(rec, preds.card, policy.card_quantile, card_cap=policy.card_cap) if use_card else None
        )
        rep = replay_signals(rec, policy, record_signals(rec, preds.calibrator), plan)
        assert live.chosen == rep.chosen, req.id
        assert live.nfe == rep.nfe, req.id
        assert len([a for a in live.attempts if a.output is not None]) == rep.attempts, req.id
        score = judge_attempt(req.image, live.image, req.instruction).score
        assert score == pytest.approx(rep.score, abs=1e-12), req.id
        assert live.stop_reason == rep.stop_reason, req.id
    # the sample exercises the decisions: confident stops, exhausted budgets, refined candidates
    assert {"confident", "budget"} <= stops and rounds == {0, 1}
    assert budgets == (
        {4} if use_card else {policy.default_budget}
    )  # CARD's give-up budget, or the fixed one


def test_a_pruned_attempt_costs_the_same_live_and_in_replay():
    """The testbed backbone stops at its own preview step, and charges what replay charges for it."""
    cost = get_cost("bagel")
    world = World(seed=3, size=48)
    r = world.sample_request(np.random.default_rng(3))
    req = EditRequest(make_image(r.source, r.source, world.size), r.instruction, "p0", r.category)
    policy = replace(POLICY, use_card=False, prune_threshold=1.0)  # every preview is pruned
    preds = Predictors(calibrator=calibrator(bias=-3.5, weight=12.0, policy=policy))
    live = AdaptiveEditor(SyntheticBackbone(), preds, scorer=online_scores, seed=0).edit(req)
    pruned = [a for a in live.attempts if a.output is not None and a.output.pruned]
    assert pruned and SyntheticBackbone().preview_step == cost.preview_step
    logged_preview_nfe = (
        cost.preview_step * cost.nfe_per_step
    )  # what the generator writes as meta.preview_nfe
    assert all(a.output.nfe == pruned_nfe(cost.nfe, logged_preview_nfe) for a in pruned)
