"""The adaptive policy, budget labels and exact replay, pinned on hand-made attempt grids."""

from __future__ import annotations

import math

import pytest

from ade_runtime.offline import Overhead, ReplayError, replay_oracle, replay_policy, replay_record, summarize
from ade_runtime.offline.signals import AttemptSignals
from ade_runtime.policy import (
    PolicyConfig,
    PolicySession,
    budget_label,
    budget_levels,
    grid_points,
    preset,
    quantile_level,
)
from ade_runtime.traces.records import Attempt, Cost, EditRecord, Judge

NFE = 28


def make_record(passes: dict, *, candidates=4, rounds=3, tokens=(0, 512), rid="r", category="color", drop=()):
    """A full grid; ``passes`` maps (candidate, round, tokens) -> judge score (>= 0.7 passes)."""
    attempts = []
    for t in tokens:
        for c in range(candidates):
            for r in range(rounds):
                if (c, r, t) in drop:
                    continue
                score = passes.get((c, r, t), 0.3)
                attempts.append(
                    Attempt(
                        candidate=c,
                        round=r,
                        reasoning_tokens=t,
                        prompt="p",
                        cost=Cost(nfe=NFE, latency_s=1.0 + t / 1000),
                        judge=Judge(score=score, passed=score >= 0.7),
                        scores={"preview": 0.5},
                    )
                )
    return EditRecord(
        id=rid, instruction="i", source_image="s.png", backbone="b", attempts=attempts, category=category
    )


def test_budget_label_cheapest_passing_point():
    # passes only at candidate 1, round 0 (tokens 0): cheapest point is K=2, R=1 -> 2 attempts
    rec = make_record({(1, 0, 0): 0.9})
    levels = budget_levels([rec])
    assert levels == [1, 2, 3, 4, 6, 8, 9, 12]
    lab = budget_label(rec, levels, unit="nfe")
    assert not lab.censored and lab.attempts == 2 and lab.reasoning_tokens == 0 and lab.cost == 2 * NFE
    assert levels[lab.level_index] == 2


def test_budget_label_prefers_refinement_when_cheaper_and_fewer_tokens_on_ties():
    # candidate 0 round 1 passes at both token levels: K=1, R=2 at tokens 0 (cost 56) wins
    rec = make_record({(0, 1, 0): 0.8, (0, 1, 512): 0.8, (0, 0, 512): 0.9})
    lab = budget_label(rec, budget_levels([rec]), unit="nfe")
    # by NFE, (1,1,512) costs 28 < 56: one attempt with reasoning wins
    assert (lab.point.candidates, lab.point.rounds, lab.reasoning_tokens) == (1, 1, 512)
    # by seconds reasoning costs 1.512 s vs 2 x 1.0 s: still the single reasoning attempt
    lab_s = budget_label(rec, budget_levels([rec]), unit="seconds")
    assert lab_s.reasoning_tokens == 512 and lab_s.cost == pytest.approx(1.512)


def test_budget_label_censored_and_unjudged():
    rec = make_record({})
    levels = budget_levels([rec])
    lab = budget_label(rec, levels)
    assert lab.censored and lab.level_index == len(levels) and lab.point is None
    for a in rec.attempts:
        a.judge = None
    assert budget_label(rec, levels) is None


def test_incomplete_grid_points_are_skipped():
    rec = make_record({(2, 0, 0): 0.9}, drop={(1, 2, 0)})
    points = {(p.candidates, p.rounds, p.reasoning_tokens) for p, _, _ in grid_points(rec)}
    assert (2, 3, 0) not in points and (2, 2, 0) in points and (3, 1, 0) in points


def test_quantile_level():
    levels = [1, 2, 4]
    assert quantile_level(levels, [0.5, 0.3, 0.1, 0.1], 0.5) == 1
    assert quantile_level(levels, [0.5, 0.3, 0.1, 0.1], 0.8) == 2
    assert quantile_level(levels, [0.5, 0.3, 0.1, 0.1], 0.95) == 4  # in the beyond mass
    with pytest.raises(ValueError, match="levels \\+ beyond"):
        quantile_level(levels, [1.0], 0.5)


def run_session(cfg, budget, conf):
    s = PolicySession(cfg, budget, 0)
    ran = []
    while (step := s.next_step()) is not None:
        ran.append(step.key)
        s.observe(step, conf.get(step.key, 0.5))
    return s, ran


def test_session_depth_first_refines_stops_and_abandons():
    cfg = PolicyConfig(tau_high=0.8, tau_low=0.2, s_max=3)
    # c0: 0.5 -> refine, 0.1 -> abandon; c1: 0.5, 0.6, 0.7 -> s_max; c2: 0.9 -> accept
    conf = {(0, 0, 0): 0.5, (0, 1, 0): 0.1, (1, 0, 0): 0.5, (1, 1, 0): 0.6, (1, 2, 0): 0.7, (2, 0, 0): 0.9}
    s, ran = run_session(cfg, 10, conf)
    assert ran == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 2, 0), (2, 0, 0)]
    assert s.stop_reason == "confident" and s.best() == (2, 0, 0)
    actions = [d.action for d in s.decisions]
    assert (
        actions.count("refine") == 3
        and actions.count("new_candidate") == 2
        and actions[-2:] == ["accept", "stop"]
    )


def test_session_budget_and_nan_never_selects():
    cfg = PolicyConfig(tau_high=0.8, tau_low=0.2, s_max=2)
    conf = {(0, 0, 0): float("nan"), (1, 0, 0): 0.3, (1, 1, 0): float("inf")}
    s, ran = run_session(cfg, 3, conf)
    assert ran == [(0, 0, 0), (1, 0, 0), (1, 1, 0)]
    assert s.stop_reason == "budget"
    assert s.best() == (1, 0, 0)  # NaN and inf are never selected nor stop the request


def test_presets():
    base = PolicyConfig(tau_high=0.7)
    b8 = preset("best_of_8", base)
    assert (b8.default_budget, b8.max_candidates, b8.s_max, b8.early_stop, b8.use_card) == (
        8,
        8,
        1,
        False,
        False,
    )
    assert preset("best_of_8_oracle", base).select == "judge"
    assert (
        preset("confidence_stop", base).use_card is False and preset("confidence_stop", base).tau_high == 0.7
    )
    assert preset("card_only", base).early_stop is False
    with pytest.raises(ValueError, match="unknown policy"):
        preset("nope")
    with pytest.raises(ValueError, match="tau_low"):
        PolicyConfig(tau_high=0.3, tau_low=0.5)


def conf_from_judge(rec, noise=0.0):
    return {a.key: (a.judge.score + noise) for a in rec.attempts}, {
        a.key: a.scores["preview"] for a in rec.attempts
    }


def signals_from_judge(rec):
    return AttemptSignals(*conf_from_judge(rec))


def test_replay_best_of_8_charges_every_candidate_and_ade_stops_early():
    rec = make_record({(0, 0, 0): 0.95}, candidates=8, rounds=2)
    conf, prev = conf_from_judge(rec)
    b8 = replay_record(rec, preset("best_of_8"), conf)
    assert b8.nfe == 8 * NFE and b8.attempts == 8 and b8.chosen == (0, 0, 0) and b8.passed
    ade = replay_record(rec, PolicyConfig(tau_high=0.8), conf, budget=4, reasoning_tokens=0)
    assert ade.nfe == NFE and ade.stop_reason == "confident" and ade.passed
    assert ade.seconds == pytest.approx(1.0)


def test_replay_overhead_is_charged_and_card_tokens_snap():
    rec = make_record({(0, 0, 512): 0.95})
    conf, _ = conf_from_judge(rec)
    out = replay_record(
        rec,
        PolicyConfig(),
        conf,
        budget=2,
        reasoning_tokens=400,
        overhead=Overhead(score_s=0.01, critique_s=0.02),
    )
    assert out.chosen == (0, 0, 512) and out.seconds == pytest.approx(1.512 + 0.03)


def test_replay_missing_attempt_is_reported_not_guessed():
    rec = make_record({}, candidates=2, rounds=1, tokens=(0,))
    conf, _ = conf_from_judge(rec)
    out = replay_record(rec, preset("best_of_4"), conf)
    assert not out.complete and out.missing == (2, 0, 0) and out.attempts == 2


def test_replay_pruning_charges_only_the_preview():
    rec = make_record({(1, 0, 0): 0.9}, candidates=3, rounds=1, tokens=(0,))
    conf, prev = conf_from_judge(rec)
    prev[(0, 0, 0)] = 0.05
    cfg = PolicyConfig(prune_threshold=0.2, tau_high=0.8)
    out = replay_record(rec, cfg, conf, budget=3, reasoning_tokens=0, preview=prev, preview_step=4)
    assert out.pruned == 1 and out.nfe == 4 + NFE and out.chosen == (1, 0, 0)
    with pytest.raises(ReplayError, match="preview"):
        replay_record(rec, cfg, conf, budget=3, reasoning_tokens=0)


def test_oracle_and_summary():
    recs = [
        make_record({(0, 2, 0): 0.9, (3, 0, 0): 0.8}, rid="a", category="color"),
        make_record({}, rid="b", category="action"),
    ]
    o = replay_oracle(recs[0])
    assert o.chosen == (3, 0, 0) and o.nfe == NFE  # one attempt beats a three-round chain
    outs = replay_policy(recs, "oracle", PolicyConfig(), signals=signals_from_judge)
    s = summarize(outs)
    assert s["n"] == 2 and s["pass_rate"] == 0.5 and s["by_category"]["action"]["pass_rate"] == 0.0
    with pytest.raises(ReplayError, match="CARD"):
        replay_policy(recs, "ade", PolicyConfig(), signals=signals_from_judge)
    single = summarize(replay_policy(recs, "single", PolicyConfig(), signals=signals_from_judge))
    assert single["nfe_per_request"] == NFE and math.isclose(single["mean_score"], 0.3)


def test_replay_pruning_uses_the_logged_preview_nfe_and_keeps_reasoning_time():
    rec = make_record({(1, 0, 512): 0.9}, candidates=2, rounds=1, tokens=(512,))
    rec.meta = {"preview_nfe": 12, "s_per_nfe": 0.01}
    conf, prev = conf_from_judge(rec)
    prev[(0, 0, 512)] = 0.0
    out = replay_record(
        rec, PolicyConfig(prune_threshold=0.2), conf, budget=2, reasoning_tokens=512, preview=prev
    )
    assert out.nfe == 12 + NFE
    # the pruned attempt paid its reasoning (1.512 s in all, 0.28 s of it denoising) minus the skipped steps
    assert out.seconds == pytest.approx((1.512 - (NFE - 12) * 0.01) + 1.512)


def test_logged_runtime_scores_are_not_calibration_inputs():
    from ade_runtime.offline.signals import attempt_features

    a = Attempt(
        0,
        0,
        0,
        "p",
        Cost(nfe=1),
        scores={"clip_t": 0.3, "preview_clip_t": 0.2, "confidence": 0.9, "critique": 0.8},
    )
    assert attempt_features(a) == {"clip_t": 0.3}
    assert attempt_features(a, critique_p=0.4) == {"clip_t": 0.3, "critique": 0.4}
