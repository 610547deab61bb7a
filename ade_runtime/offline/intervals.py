"""Paired comparisons of two policies on the same requests: the mean difference with a bootstrap interval.

ADE's claims are statistical: a policy "matches" Best-of-N only when the interval of the paired
difference says so. ``paired_difference`` resamples requests (not attempts) with replacement, the
percentile bootstrap of Efron & Tibshirani (1993, ch. 13), and labels the comparison ``win``,
``loss`` or ``level`` (the interval holds 0) and whether the sample is small (< 300 requests).
Only numpy: replay and the live loop report intervals without the training extras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

SMALL_SAMPLE = 300  # fewer paired requests than this and the comparison is labelled small


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over n paired requests, with its ``level`` bootstrap interval [lo, hi]."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    lo: float
    hi: float
    level: float
    verdict: str  # "win" (lo > margin), "loss" (hi < -margin), "level" otherwise
    small_sample: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        f = f"{{:+.{digits}f}}"
        small = ", small sample" if self.small_sample else ""
        return (
            f"{f.format(self.diff)} [{f.format(self.lo)}, {f.format(self.hi)}] "
            f"({self.verdict}, n={self.n}{small})"
        )


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = 0.9,
    n_boot: int = 2000,
    seed: int = 0,
    margin: float = 0.0,
) -> PairedDifference:
    """Paired bootstrap interval of mean(a - b); ``a[i]`` and ``b[i]`` are the same request."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_difference needs two equal-length 1-d arrays, got {x.shape} and {y.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return PairedDifference(0, nan, nan, nan, nan, nan, level, "level", True)
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    verdict = "win" if lo > margin else "loss" if hi < -margin else "level"
    return PairedDifference(
        n=n,
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=float(d.mean()),
        lo=float(lo),
        hi=float(hi),
        level=level,
        verdict=verdict,
        small_sample=n < SMALL_SAMPLE,
    )


def paired_by_id(a: Mapping[str, float], b: Mapping[str, float], **kwargs) -> PairedDifference:
    """``paired_difference`` over the request ids both mappings hold (sorted, so the pairing is stable)."""
    ids = sorted(set(a) & set(b))
    return paired_difference([a[i] for i in ids], [b[i] for i in ids], **kwargs)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, *, level: float = 0.9, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the percentile bootstrap interval of one mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(x.mean()), float(lo), float(hi)
