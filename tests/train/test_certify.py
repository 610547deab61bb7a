"""Certified thresholds (Learn-then-Test + Pareto testing): the maths on synthetic settings with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from ade_train.calibrate.coverage import cheapest_meeting_target, meets, resplit_coverage
from ade_train.calibrate.risk_control import (
    RiskSpec,
    certify,
    losses,
    n_needed,
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
    assert cert.n_needed is None or cert.n_needed > 30
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


def test_n_needed_grows_as_the_observed_slack_shrinks():
    rng = np.random.default_rng(2)
    wide, narrow = rng.uniform(0.0, 0.8, 200), rng.uniform(0.1, 0.89, 200)  # means 0.40 and ~0.495
    for method in ("wsr", "hb"):
        a = n_needed(wide, 0.5, 0.1, binary=False, method=method)
        b = n_needed(narrow, 0.5, 0.1, binary=False, method=method)
        assert a is not None and b is not None and 10 < a < b
    assert n_needed(np.full(50, 0.5), 0.5, 0.1, binary=False) is None


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
