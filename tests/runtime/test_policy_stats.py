"""Paired bootstrap intervals: the verdicts ADE's comparisons are labelled with."""

from __future__ import annotations

import numpy as np
import pytest

from ade_runtime.offline.intervals import SMALL_SAMPLE, bootstrap_mean_ci, paired_by_id, paired_difference


def test_a_real_difference_is_a_win_and_noise_is_level():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 500)
    better = base + 0.05 + rng.normal(0, 0.05, 500)
    same = base + rng.normal(0, 0.05, 500)
    win = paired_difference(better, base)
    assert win.verdict == "win" and win.lo > 0 and win.diff == pytest.approx(0.05, abs=0.01)
    assert paired_difference(base, better).verdict == "loss"
    level = paired_difference(same, base)
    assert level.verdict == "level" and level.lo < 0 < level.hi
    assert not level.small_sample and paired_difference(same[:50], base[:50]).small_sample
    assert "level" in level.text() and "n=500" in level.text()


def test_pairing_matters_more_than_the_spread_of_requests():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 400)  # requests differ a lot; the policies differ by a steady 0.02
    d = paired_difference(base + 0.02, base)
    assert d.hi - d.lo < 1e-9 and d.verdict == "win"


def test_interval_is_reproducible_and_covers_the_mean():
    x = np.linspace(0, 1, 301)
    assert paired_difference(x, x * 0.5, seed=3) == paired_difference(x, x * 0.5, seed=3)
    m, lo, hi = bootstrap_mean_ci(x)
    assert lo < m < hi and m == pytest.approx(0.5)


def test_pairs_by_request_id_and_checks_its_input():
    a = {"r1": 1.0, "r2": 0.5, "r3": 0.0}
    b = {"r2": 0.25, "r1": 0.5, "r9": 1.0}
    d = paired_by_id(a, b)
    assert d.n == 2 and d.diff == pytest.approx(0.375)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])
    assert paired_difference([], []).n == 0
    assert SMALL_SAMPLE == 300
