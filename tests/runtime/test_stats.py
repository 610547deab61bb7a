"""The shared rank statistics (``ade_runtime.stats``): pinned values, ties, undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ade_runtime.stats import auroc, average_ranks, spearman


def test_average_ranks_give_ties_their_mean_rank():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([]).tolist() == []
    assert np.isnan(average_ranks([1.0, float("nan")])).all()


def test_auroc_pinned_and_undefined_for_one_class():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [0, 1, 1]) == 0.5  # ties count half
    assert math.isnan(auroc([0.2, 0.3], [True, True]))
    assert auroc([0.2, 0.3], [False, False], undefined=0.5) == 0.5


def test_spearman_pinned_and_undefined_cases():
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1], [2]) is None and spearman([1, 1], [1, 2]) is None
    assert spearman([1, 1], [1, 2], undefined=0.0) == 0.0
    with pytest.raises(ValueError, match="3 values against 2"):
        spearman([1, 2, 3], [1, 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_is_the_share_of_correctly_ordered_pairs(rows):
    scores, labels = [s for s, _ in rows], [y for _, y in rows]
    pos = [s for s, y in rows if y]
    neg = [s for s, y in rows if not y]
    got = auroc(scores, labels)
    if not pos or not neg:
        assert math.isnan(got)
        return
    want = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert got == pytest.approx(want)
