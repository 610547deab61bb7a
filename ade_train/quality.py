"""Weak-model checks every ``ade-train`` job runs before it ships: a weak model is never exported silently.

Each check returns one sentence (or None) that the job prints in its summary and writes into the
model card (``PredictorSection.warnings``):

- ``critique_warning``: the critique's held-out AUROC with a bootstrap 90% interval over requests;
  weak when the interval's lower end is not above 0.5 (chance).
- ``card_warning``: CARD's validation NLL against the constant prior's and the per-category prior's.
- ``calibration_warning``: the calibrated map against its cheap-score fallback on held-out data by
  ECE and Brier score (the job then exports the fallback map; see ``ade_train.calibrate.controller``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ade_runtime.stats import auroc


def auroc_interval(
    scores: Sequence[float],
    labels: Sequence[bool],
    groups: Sequence[str] | None = None,
    *,
    level: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(AUROC, lo, hi): a percentile bootstrap interval resampling whole requests (``groups``)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    point = auroc(scores, labels)
    if not math.isfinite(point):
        return point, float("nan"), float("nan")
    keys = np.asarray(groups) if groups is not None and len(groups) == len(scores) else np.arange(len(scores))
    uniq, inv = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        value = auroc(scores[idx], labels[idx])
        if math.isfinite(value):
            stats.append(value)
    if not stats:
        return point, float("nan"), float("nan")
    alpha = (1 - level) / 2
    return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def critique_warning(point: float, lo: float, hi: float, split: str = "test") -> str | None:
    """``weak: AUROC x [lo, hi] not above chance`` when the interval's lower end is <= 0.5."""
    if not math.isfinite(point):
        return f"weak: {split} AUROC undefined (one class only among the held-out attempts)"
    if not math.isfinite(lo) or lo <= 0.5:
        return (
            f"weak: AUROC {point:.3f} [{lo:.3f}, {hi:.3f}] not above chance ({split} split, 90% bootstrap CI)"
        )
    return None


def card_warning(nll: float, constant_nll: float, category_nll: float | None = None) -> str | None:
    """Says so when CARD's validation NLL does not beat the constant or the per-category prior."""
    beaten = [("constant prior", constant_nll)]
    if category_nll is not None and math.isfinite(category_nll):
        beaten.append(("per-category prior", category_nll))
    lost = [f"{name} {value:.4f}" for name, value in beaten if not nll < value]
    if not lost:
        return None
    return f"weak: CARD's validation NLL {nll:.4f} does not beat the {', '.join(lost)}"


def calibration_warning(primary: tuple[float, float], fallback: tuple[float, float] | None) -> str | None:
    """When the calibrated map is worse than its cheap-score fallback on held-out data by the Brier
    score: ``primary`` and ``fallback`` are (ece, brier). The Brier score is a proper scoring rule
    (calibration and discrimination together); ECE is not (a constant forecast has ECE ~ 0), and on
    the few dozen held-out requests of a calibration split it moves by more than the maps differ, so
    it is reported beside the Brier score but does not decide alone."""
    if fallback is None:
        return None
    p_brier, f_brier = primary[1], fallback[1]
    if not (math.isfinite(p_brier) and math.isfinite(f_brier) and p_brier > f_brier):
        return None
    worse = [f"Brier {p_brier:.4f} > {f_brier:.4f}", f"ECE {primary[0]:.4f} vs {fallback[0]:.4f}"]
    return (
        "weak: the calibrated map is worse than its cheap-score fallback on held-out requests ("
        + ", ".join(worse)
        + "); the fallback map is exported instead"
    )
