"""The compute-quality Pareto front of a set of settings, shared by certification and the calibration plots.

Pareto testing (Laufer-Goldshtein et al., ICLR 2023) tests the front from the most to the least
compute (``ade_train.calibrate.certify``); the compute-quality plot draws it from the least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pareto_order(cost: Sequence[float], quality: Sequence[float]) -> list[int]:
    """The settings no other setting beats on both compute and quality, from the most to the least compute.

    Ties in compute keep the higher quality; a setting with NaN compute or quality is never on the front.
    """
    c = np.asarray(cost, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(c) & np.isfinite(q))
    front: list[int] = []
    best_q = -math.inf
    # cheapest first; a setting joins the front when it is strictly better than everything cheaper
    for i in sorted(ok.tolist(), key=lambda j: (c[j], -q[j], j)):
        if q[i] > best_q + 1e-12:
            front.append(i)
            best_q = q[i]
    return front[::-1]
