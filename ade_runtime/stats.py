"""Rank statistics shared by the testbed's realism figures, the training metrics and judge agreement.

``average_ranks`` gives tied values their average rank (scipy's ``rankdata(method="average")``);
``auroc`` is the Mann-Whitney form of the area under the ROC curve on those ranks and ``spearman``
the Pearson correlation of them (as ``scipy.stats.spearmanr``). Pure numpy: the runtime imports no
scipy. A statistic that is undefined (one class only; fewer than two pairs or a constant side)
returns ``undefined``, NaN or None by default; a caller that wants chance (0.5) or 0.0 says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

U = TypeVar("U")


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties given the average of their ranks; all NaN when any value is NaN."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        return np.full(len(x), np.nan)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    ends = np.append(starts[1:], len(x)) - 1
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends) / 2.0 + 1.0, ends - starts + 1)
    return ranks


def auroc(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    *,
    undefined: float = float("nan"),
) -> float:
    """Area under the ROC curve (rank statistic, ties count half); ``undefined`` when one class is absent."""
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return undefined
    ranks = average_ranks(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, undefined: U = None
) -> float | U:
    """Spearman's rho with average ranks for ties; ``undefined`` with fewer than two pairs or a constant side."""
    ra, rb = average_ranks(a), average_ranks(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: {len(ra)} values against {len(rb)}")
    if len(ra) < 2 or (ra[0] == ra).all() or (rb[0] == rb).all():
        return undefined
    return float(np.corrcoef(np.vstack([ra, rb]))[1, 0])
