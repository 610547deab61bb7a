"""Power before collection: how many certification requests a declared claim needs, by resampling a pilot.

A certificate is a test, and a test on too few requests fails even where the claim is true: with a
paired per-request s.d. of 0.18, a 0.02 margin is certified with probability about 0.07 on 150
requests and 0.8 on 600. ``plan`` says so *before* the certify part is looked at. It resamples the
pilot (the fit part of the calibration split, or a small collection made for the purpose) with
replacement to n requests, runs the very test certification will run (the same loss, p-value and
fixed-sequence order over the same front) and counts how often something is certified, and what the
cheapest certified setting costs. The pilot stands in for the population: the figures are as good as
the pilot is representative, and every draw of the same seed uses the same random numbers, so the
power curve is smooth in n.

    rows = plan(spec, pilot_scores, pilot_reference, costs, reference_cost, n_grid=(150, 300, 600))
    n = n_for_power(spec, pilot_scores, pilot_reference, power=0.8)
    eps = smallest_margin(spec, pilot_scores, pilot_reference, n=400, power=0.8)

``pilot_scores``: pilot requests x front settings, in the order certification tests them (most
compute first); ``pilot_reference``: the reference policy's scores on the same requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ade_train.calibrate.risk_control import RiskSpec, losses, p_values

DRAWS = 200  # resamples per n: the power's standard error is at most 0.035
POWER = 0.8  # the conventional power a plan asks for
N_MAX = 20_000


@dataclass(frozen=True)
class PlanRow:
    """What certification on ``n`` requests is expected to give (by resampling the pilot)."""

    n: int
    power: float  # P(something on the front is certified)
    expected_cost: float | None  # mean cost of the export (the reference's when nothing certifies)
    expected_share: float | None  # expected_cost / the reference's cost

    def to_dict(self) -> dict:
        return asdict(self)


def _prefix(pv: np.ndarray, delta: float) -> np.ndarray:
    """Fixed-sequence testing per row of ``pv`` (draws x K): how many settings are certified."""
    ok = pv <= delta
    return np.where(ok.all(axis=1), ok.shape[1], np.argmin(ok, axis=1))


def _draws(spec: RiskSpec, loss: np.ndarray, alpha: float, n: int, draws: int, seed: int) -> np.ndarray:
    """Certified prefix length of each of ``draws`` resamples of size ``n`` of the pilot's losses."""
    rng = np.random.default_rng([seed, n])
    out = np.empty(draws, dtype=np.int64)
    binary = spec.form == "absolute"
    for b in range(draws):
        idx = rng.integers(0, loss.shape[0], n)
        pv = p_values(loss[idx], alpha, binary=binary, delta=spec.delta, method=spec.p_value)
        out[b] = _prefix(pv[None, :], spec.delta)[0]
    return out


def _pilot_loss(spec: RiskSpec, scores, reference) -> tuple[np.ndarray, float]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.shape[0] < 2 or s.shape[1] == 0:
        raise ValueError(f"plan: the pilot needs >= 2 requests and >= 1 setting, got {s.shape}")
    return losses(spec, s, None if reference is None else np.asarray(reference, dtype=np.float64))


def power_at(
    spec: RiskSpec, scores, reference, n: int, *, draws: int = DRAWS, seed: int = 0, need: int = 1
) -> float:
    """P(certification on ``n`` requests certifies at least the first ``need`` settings of the front), by
    resampling the pilot (``need`` > 1: the power to reach a setting that saves compute)."""
    loss, alpha = _pilot_loss(spec, scores, reference)
    return float((_draws(spec, loss, alpha, int(n), draws, seed) >= need).mean())


def plan(
    spec: RiskSpec,
    scores,
    reference,
    costs: Sequence[float],
    reference_cost: float,
    *,
    n_grid: Sequence[int] = (100, 200, 300, 400, 600, 800, 1200, 1600, 2400),
    draws: int = DRAWS,
    seed: int = 0,
) -> list[PlanRow]:
    """Power and the expected export cost at each n of ``n_grid`` (``costs``: each front setting's cost)."""
    loss, alpha = _pilot_loss(spec, scores, reference)
    if len(costs) != loss.shape[1]:
        raise ValueError(f"plan: {len(costs)} costs for {loss.shape[1]} settings")
    cost = np.append(np.asarray(costs, dtype=np.float64), np.nan)
    rows = []
    for n in n_grid:
        k = _draws(spec, loss, alpha, int(n), draws, seed)
        # the export: the cheapest certified setting (the last of the certified prefix), else the reference
        paid = np.where(k > 0, cost[np.maximum(k - 1, 0)], reference_cost)
        exp = float(np.mean(paid)) if np.isfinite(paid).all() else None
        share = exp / reference_cost if exp is not None and reference_cost > 0 else None
        rows.append(PlanRow(int(n), float((k > 0).mean()), exp, share))
    return rows


def n_for_power(
    spec: RiskSpec,
    scores,
    reference,
    *,
    power: float = POWER,
    draws: int = DRAWS,
    seed: int = 0,
    n_max: int = N_MAX,
    need: int = 1,
) -> int | None:
    """The smallest n (to about 5%) at which certification certifies the first ``need`` settings with
    probability >= ``power``; None when one of them misses the claim on average or n_max does not do."""
    loss, alpha = _pilot_loss(spec, scores, reference)
    if not (loss[:, :need].mean(axis=0) < alpha).all():
        return None

    def ok(n: int) -> bool:
        return float((_draws(spec, loss, alpha, n, draws, seed) >= need).mean()) >= power

    lo, hi = 8, 16
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > n_max:
            return None
    while hi - lo > max(4, lo // 20):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return int(hi)


def smallest_margin(
    spec: RiskSpec,
    scores,
    reference,
    n: int,
    *,
    power: float = POWER,
    draws: int = DRAWS,
    seed: int = 0,
    ceiling: float = 0.2,
    tol: float = 0.0025,
    need: int = 1,
) -> float | None:
    """The smallest margin epsilon (``margin`` form) at which the first ``need`` settings are certified on ``n``
    requests with probability >= ``power`` (to ``tol``); None when even ``ceiling`` is not."""
    if spec.form != "margin":
        raise ValueError("smallest_margin plans the margin form only")

    def ok(eps: float) -> bool:
        t = spec.with_target(eps)
        return power_at(t, scores, reference, n, draws=draws, seed=seed, need=need) >= power

    if not ok(ceiling):
        return None
    lo, hi = 0.0, ceiling
    if ok(lo):
        return 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return round(hi, 4)
