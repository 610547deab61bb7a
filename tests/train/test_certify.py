"""Certified thresholds (Learn-then-Test + Pareto testing): the maths on synthetic settings with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from ade_train.calibrate.coverage import cheapest_meeting_target, draw_coverage, meets, resplit_coverage
from ade_train.calibrate.power import n_for_power, plan, power_at, smallest_margin
from ade_train.calibrate.risk_control import (
    RiskSpec,
    certify,
    losses,
    p_values,
    pareto_order,
    wsr_p_values,
)


def _pool(n: int = 2000, seed: int = 0):
    """A reference and 11 settings, each cheaper one worse; settings 5-10 are worse than the reference,
    settings 5 and 6 only just (barely any clipping: the gaps are the true differences of means)."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.3, 0.7, n)
    gaps = np.array([-0.06, -0.04, -0.03, -0.02, -0.01, 0.0, 0.005, 0.01, 0.04, 0.08, 0.12])
    noise = rng.normal(0.0, 0.1, (n, gaps.size))
    scores = np.clip(ref[:, None] - gaps[None, :] + noise, 0.0, 1.0)
    cost = np.tile(np.linspace(60.0, 5.0, gaps.size), (n, 1))
    return scores, ref, cost


def test_pareto_order_keeps_only_undominated_settings_from_most_compute():
    cost = [10, 5, 7, 1, 7, float("nan")]
    quality = [0.9, 0.8, 0.7, 0.5, 0.85, 1.0]
    assert pareto_order(cost, quality) == [0, 4, 1, 3]


def test_relative_loss_is_bounded_and_equivalent_to_the_quality_target():
    rng = np.random.default_rng(1)
    s, ref = rng.uniform(0, 1, (50, 3)), rng.uniform(0, 1, 50)
    for f in (0.8, 1.0, 1.2):
        loss, alpha = losses(RiskSpec("relative", f), s, ref)
        assert loss.min() >= 0.0 and loss.max() <= 1.0
        assert np.array_equal(loss.mean(axis=0) <= alpha + 1e-12, s.mean(axis=0) >= f * ref.mean() - 1e-12)


def test_absolute_form_uses_pass_indicators():
    passed = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], dtype=float)
    loss, alpha = losses(RiskSpec("absolute", 0.7), passed, None)
    assert alpha == pytest.approx(0.3)
    assert loss.mean(axis=0).tolist() == [0.25, 0.25]
    assert meets(RiskSpec("absolute", 0.7), passed[:, 0], None)


def test_certificate_picks_the_cheapest_setting_that_is_truly_good_enough():
    scores, ref, cost = _pool()
    sel, cer = slice(0, 1000), slice(1000, 2000)
    spec = RiskSpec("relative", 1.0, delta=0.1)
    cert = certify(
        spec,
        select_scores=scores[sel],
        select_reference=ref[sel],
        select_cost=cost[sel].mean(axis=0),
        certify_scores=scores[cer],
        certify_reference=ref[cer],
    )
    assert cert.chosen is not None and cert.p_value <= 0.1
    assert cert.order[0] == 0 and cert.certified == cert.order[: len(cert.certified)]
    truth, truth_ref, _ = _pool(n=200_000, seed=99)  # the population the requests are drawn from
    assert truth[:, cert.chosen].mean() >= truth_ref.mean()
    assert "certified" in cert.explain()
    naive = cheapest_meeting_target(spec, scores, ref, cost.mean(axis=0))
    assert naive >= cert.chosen  # the uncertified choice is never more careful


def test_too_few_requests_say_how_many_would_do_and_what_can_be_claimed():
    scores, ref, cost = _pool(n=60, seed=3)
    spec = RiskSpec("relative", 1.0, delta=0.1)
    cert = certify(
        spec,
        select_scores=scores[:30],
        select_reference=ref[:30],
        select_cost=cost[:30].mean(axis=0),
        certify_scores=scores[30:],
        certify_reference=ref[30:],
    )
    assert cert.chosen is None
    assert cert.n_needed is None or cert.n_needed > 30  # planned on the fit part (30 requests)
    assert cert.strongest_target is not None and cert.strongest_target < 1.0
    text = cert.explain()
    assert text.startswith("NOT certified") and "strongest claim" in text
    weaker = cert.spec.with_target(cert.strongest_target)
    again = certify(
        weaker,
        select_scores=scores[:30],
        select_reference=ref[:30],
        select_cost=cost[:30].mean(axis=0),
        certify_scores=scores[30:],
        certify_reference=ref[30:],
    )
    assert again.chosen is not None


def test_margin_loss_is_bounded_and_equivalent_to_the_declared_margin():
    rng = np.random.default_rng(1)
    s, ref = rng.uniform(0, 1, (50, 3)), rng.uniform(0, 1, 50)
    spec = RiskSpec("margin", 0.02)
    loss, alpha = losses(spec, s, ref)
    assert loss.min() >= 0 and loss.max() <= 1 and alpha == pytest.approx(0.51)
    for k in range(3):
        holds = s[:, k].mean() >= ref.mean() - 0.02
        assert (loss[:, k].mean() <= alpha) == holds
    # a policy that exactly matches its reference meets any margin >= 0 (the ratio f = 1 never could)
    assert meets(RiskSpec("margin", 0.0), ref, ref)
    assert RiskSpec().form == "margin" and RiskSpec().target == 0.02  # the default claim
    assert RiskSpec("margin", 0.02).claim == ">= reference mean score - 0.02 at delta = 0.1"
    with pytest.raises(ValueError, match="margin"):
        RiskSpec("margin", 0.7)


def test_a_policy_level_with_its_reference_is_certified_at_a_margin_with_enough_requests():
    rng = np.random.default_rng(7)
    n = 1200
    ref = rng.uniform(0.3, 0.9, n)
    level = np.clip(ref + rng.normal(0.0, 0.1, n), 0, 1)  # equal on average
    scores = np.stack([ref, level], axis=1)
    cert = certify(
        RiskSpec("margin", 0.02),
        select_scores=scores[:400],
        select_reference=ref[:400],
        select_cost=[10.0, 3.0],
        certify_scores=scores[400:],
        certify_reference=ref[400:],
    )
    assert cert.chosen == 1 and cert.power is not None and cert.power > 0.5
    # ... and never at a margin of 0 with a ratio of 1 (the old default): equality is in the null
    strict = certify(
        RiskSpec("relative", 1.0),
        select_scores=scores[:400],
        select_reference=ref[:400],
        select_cost=[10.0, 3.0],
        certify_scores=scores[400:],
        certify_reference=ref[400:],
    )
    assert strict.chosen is None


def test_power_grows_with_n_and_the_plan_finds_the_n_for_80_percent():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0.3, 0.7, 400)
    pilot = np.clip(ref[:, None] + rng.normal(0.0, 0.18, (400, 1)), 0, 1)  # level, paired s.d. about 0.18
    spec = RiskSpec("margin", 0.02)
    rows = plan(spec, pilot, ref, [20.0], 72.0, n_grid=(150, 600, 2400), draws=100)
    powers = [r.power for r in rows]
    assert powers == sorted(powers) and powers[0] < 0.5 < powers[-1]
    n80 = n_for_power(spec, pilot, ref, draws=100)
    assert n80 is not None and 150 < n80 < 2400
    assert power_at(spec, pilot, ref, n80, draws=100) >= 0.8
    # a certified export costs the setting's 20, an uncertified one the reference's 72
    assert rows[-1].expected_share < rows[0].expected_share <= 1.0
    # the smallest margin 150 requests certify with 80% power is wider than 0.02
    eps = smallest_margin(spec, pilot, ref, 150, draws=100)
    assert eps is not None and 0.02 < eps < 0.2
    # a pilot that misses the claim on average: no n will do
    worse = np.clip(ref[:, None] - 0.1, 0, 1)
    assert n_for_power(spec, worse, ref, draws=50) is None


def test_draw_coverage_bounds_certified_and_wrong_and_can_fail():
    scores, ref, cost = _pool(n=3000, seed=11)
    refs = np.stack([ref - 0.05, ref], axis=1)  # two reference candidates, the second the stronger
    ref_cost = np.tile([30.0, 60.0], (3000, 1))
    spec = RiskSpec("margin", 0.0, delta=0.1)
    out = draw_coverage(spec, scores, refs, cost, ref_cost, n_calibration=600, draws=100, seed=0)
    assert out["certified_and_wrong"] <= 0.1 and out["holds"]
    assert 0 < out["certified_share"] <= 1 and out["reference_chosen"] == {1: 100}
    # the check can fail: a test that ignores its delta (a p-value of 0 always) is caught
    bad = RiskSpec("margin", 0.0, delta=0.1)
    import ade_train.calibrate.risk_control as rc

    real = rc.p_values
    try:
        rc.p_values = lambda loss, alpha, **kw: np.zeros(loss.shape[1])
        broken = draw_coverage(bad, scores, refs, cost, ref_cost, n_calibration=600, draws=50, seed=0)
    finally:
        rc.p_values = real
    assert broken["certified_and_wrong"] > 0.1 and not broken["holds"]


def test_draw_coverage_of_the_shipped_procedure_judges_each_draw_at_the_margin_it_declared():
    """With widening, each draw's fit part may declare a wider margin; wrong = missing the declared one."""
    scores, ref, cost = _pool(n=3000, seed=12)
    refs, ref_cost = ref[:, None], np.full((3000, 1), 60.0)
    spec = RiskSpec("margin", 0.0, delta=0.1)
    fixed = draw_coverage(spec, scores, refs, cost, ref_cost, n_calibration=300, draws=20, seed=1)
    out = draw_coverage(
        spec, scores, refs, cost, ref_cost, n_calibration=300, draws=20, seed=1, max_margin=0.05
    )
    assert fixed["declared_targets"] == {0.0: 20} and fixed["max_margin"] is None
    assert sum(out["declared_targets"].values()) == 20 and max(out["declared_targets"]) > 0.0
    assert all(0.0 <= t <= 0.05 for t in out["declared_targets"])
    assert out["holds"] and out["certified_share"] >= fixed["certified_share"]


def test_wsr_is_valid_under_the_null_and_sharper_than_hoeffding_bentkus():
    rng = np.random.default_rng(4)
    alpha, delta = 0.5, 0.1
    null = rng.uniform(0.4, 0.6, (300, 400))  # mean exactly alpha: every rejection is an error
    assert (wsr_p_values(null, alpha, delta) <= delta).mean() <= delta
    good = np.clip(rng.normal(0.47, 0.05, (300, 50)), 0, 1)  # small gap, small variance
    assert (wsr_p_values(good, alpha, delta) <= delta).mean() > 0.9
    assert (p_values(good, alpha, binary=False, method="hb") <= delta).mean() < 0.5


def test_resplit_coverage_holds_for_the_certificate_and_not_for_the_search():
    scores, ref, cost = _pool(n=1200, seed=5)
    # a pool where the boundary settings are worth picking: setting 4 sits right on the reference
    out = resplit_coverage(RiskSpec("relative", 1.0, delta=0.1), scores, ref, cost, n_splits=100, seed=0)
    assert out["certified_splits"] + out["uncertified_splits"] == 100
    assert out["certified_coverage"] >= 0.9
    assert out["search_miss_rate"] > out["certified_miss_rate"]
    assert out["certified_mean_cost"] > out["search_mean_cost"]  # the guarantee costs compute


def test_spec_checks_its_values():
    with pytest.raises(ValueError, match="delta"):
        RiskSpec("relative", 1.0, delta=0.0)
    with pytest.raises(ValueError, match="form"):
        RiskSpec("ratio", 1.0)
    with pytest.raises(ValueError, match="pass rate"):
        RiskSpec("absolute", 1.0)


def test_too_few_requests_for_the_margin_declare_a_wider_one_from_the_fit_part_alone():
    """The plan widens the declared margin before the certification part is read, and says by how much."""
    rng = np.random.default_rng(3)
    n_fit, n_cer = 300, 250
    ref = rng.uniform(0.3, 0.9, n_fit + n_cer)
    level = np.clip(ref + rng.normal(0.0, 0.18, ref.size), 0, 1)  # level with the reference on average
    scores = np.stack([ref, level], axis=1)
    kw = dict(
        select_scores=scores[:n_fit],
        select_reference=ref[:n_fit],
        select_cost=[10.0, 3.0],
        reference_cost=10.0,
    )
    asked = RiskSpec("margin", 0.02)
    cert = certify(asked, **kw, certify_scores=scores[n_fit:], certify_reference=ref[n_fit:], max_margin=0.08)
    # 250 requests plan well under 80% power at 0.02: a wider margin, on the 0.005 grid, is declared
    assert cert.requested_target == 0.02 and cert.requested_power < 0.8
    assert (
        0.02 < cert.spec.target <= 0.08
        and abs(cert.spec.target / 0.005 - round(cert.spec.target / 0.005)) < 1e-9
    )
    assert cert.power >= 0.8 and cert.requested_n_needed > n_cer
    assert "0.02 was asked" in cert.explain() and f"{cert.requested_n_needed - n_cer} more" in cert.explain()
    assert cert.chosen == 1  # the level policy is certified at the declared margin
    # the declared margin depends on the fit part only: other certification requests, the same margin
    other = np.clip(ref[n_fit:] - 0.2, 0, 1)
    cert2 = certify(
        asked, **kw, certify_scores=np.stack([ref[n_fit:], other], axis=1), certify_reference=ref[n_fit:],
        max_margin=0.08,
    )  # fmt: skip
    assert cert2.spec.target == cert.spec.target and cert2.chosen == 0  # the bad cheap setting fails
    # enough power for the asked margin: nothing is widened; max_margin = the margin never widens
    many = certify(asked, **kw, certify_scores=scores[n_fit:], certify_reference=ref[n_fit:], max_margin=0.02)
    assert many.spec.target == 0.02 and not many.widened and many.requested_target is None
    big = np.clip(np.tile(scores[:n_fit], (8, 1)) + rng.normal(0, 0.001, (8 * n_fit, 2)), 0, 1)
    plenty = certify(
        asked, select_scores=scores[:n_fit], select_reference=ref[:n_fit], select_cost=[10.0, 3.0],
        certify_scores=big, certify_reference=np.tile(ref[:n_fit], 8), max_margin=0.08, reference_cost=10.0,
    )  # fmt: skip
    assert plenty.spec.target == 0.02 and not plenty.widened
