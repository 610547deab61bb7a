"""Fit the calibration maps with scikit-learn and export them to the runtime ``Calibrator``.

The maps are the ones of scikit-learn's probability calibration guide (sklearn/calibration.py,
sklearn/isotonic.py): a logistic regression on standardised signals (Platt scaling for several
inputs), an isotonic regression on a single signal, and the isotonic map on top of a *frozen*
logistic regression (``CalibratedClassifierCV(FrozenEstimator(...), method="isotonic")``, the
scikit-learn >= 1.6 replacement of ``cv="prefit"``). The method is chosen on held-out requests by
log-loss (Brier breaks ties); isotonic maps are only eligible with at least ``min_isotonic_samples``
fitting samples because they overfit small sets (scikit-learn's guidance: prefer sigmoid there).
``to_tensors`` turns a fitted estimator into the tensors ``CalibrationHead`` evaluates in torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ade_runtime.errors import InputError
from ade_runtime.predictors.calibration import METHODS

_EPS = 1e-6  # log-loss of a 0/1 prediction is infinite; clip like a probability that is never certain


def group_fraction(group: str, salt: str = "") -> float:
    """A stable number in [0, 1) per request id, so splits never separate a request's attempts."""
    digest = hashlib.sha256(f"{salt}{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_group(groups: np.ndarray, fraction: float, salt: str) -> np.ndarray:
    """Boolean mask of the rows whose group falls in the first ``fraction`` (deterministic)."""
    cache: dict[str, bool] = {}
    out = np.zeros(len(groups), dtype=bool)
    for i, g in enumerate(groups):
        if g not in cache:
            cache[g] = group_fraction(str(g), salt) < fraction
        out[i] = cache[g]
    return out


def _check_labels(y: np.ndarray, what: str) -> None:
    if len(y) == 0:
        raise InputError(
            f"{what}: no judged attempts to calibrate on; the calibration split needs judge labels"
        )
    if y.min() == y.max():
        label = "passing" if y[0] else "failing"
        raise InputError(
            f"{what}: all {len(y)} judged attempts are {label}; calibration needs both outcomes "
            "(collect more requests or widen the calibration split)"
        )


def fit_estimator(
    X: np.ndarray,
    y: np.ndarray,
    method: str,
    *,
    groups: np.ndarray | None = None,
    C: float = 1.0,
    seed: int = 0,
) -> Any:
    """Fit one calibration map of ``method`` on features ``X`` [N, F] and 0/1 labels ``y``.

    ``logistic+isotonic`` fits the logistic regression on one half of the requests (``groups``) and
    the isotonic map on the other half, through a FrozenEstimator so the first fit is not redone.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if method not in METHODS:
        raise InputError(f"calibration method {method!r}; choose one of {list(METHODS)}")
    _check_labels(y, f"fit {method}")
    if method == "isotonic":
        if X.shape[1] != 1:
            raise InputError(f"method 'isotonic' maps one signal, got {X.shape[1]}; use 'logistic+isotonic'")
        return IsotonicRegression(out_of_bounds="clip").fit(X[:, 0], y)
    logistic = Pipeline(
        [("scale", StandardScaler()), ("logistic", LogisticRegression(C=C, random_state=seed))]
    )
    if method == "logistic":
        return logistic.fit(X, y)
    groups = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups)
    first = split_by_group(groups, 0.5, salt=f"iso-half-{seed}")
    if first.all() or not first.any():
        raise InputError(f"'logistic+isotonic' needs at least two requests to split, got {len(set(groups))}")
    _check_labels(y[first], "logistic half of 'logistic+isotonic'")
    _check_labels(y[~first], "isotonic half of 'logistic+isotonic'")
    logistic.fit(X[first], y[first])
    return CalibratedClassifierCV(FrozenEstimator(logistic), method="isotonic").fit(X[~first], y[~first])


def sklearn_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """P(pass) from a fitted estimator of ``fit_estimator`` (the reference the torch map must equal)."""
    X = np.asarray(X, dtype=np.float64)
    if isinstance(estimator, IsotonicRegression):
        return estimator.predict(X[:, 0])
    return estimator.predict_proba(X)[:, 1]


def to_tensors(estimator: Any) -> dict[str, torch.Tensor]:
    """The parameters ``CalibrationHead`` needs, taken from a fitted estimator (float64)."""

    def t(a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1).copy())

    if isinstance(estimator, IsotonicRegression):
        return {"iso_x": t(estimator.X_thresholds_), "iso_y": t(estimator.y_thresholds_)}
    out: dict[str, torch.Tensor] = {}
    if isinstance(estimator, CalibratedClassifierCV):
        inner = estimator.calibrated_classifiers_[0]
        iso = inner.calibrators[0]
        out.update({"iso_x": t(iso.X_thresholds_), "iso_y": t(iso.y_thresholds_)})
        pipe = inner.estimator.estimator  # FrozenEstimator -> the fitted pipeline
    else:
        pipe = estimator
    scaler, logistic = pipe.named_steps["scale"], pipe.named_steps["logistic"]
    out.update(
        {
            "mean": t(scaler.mean_),
            "scale": t(scaler.scale_),
            "weight": t(logistic.coef_[0]),
            "bias": t(logistic.intercept_),
        }
    )
    return out


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins: sum_b |mean(y_b) - mean(p_b)| * n_b / n."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += abs(y[m].mean() - p[m].mean()) * m.sum()
    return float(total / len(p))


def scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log-loss, Brier score and ECE of probabilities ``p`` against labels ``y``."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return {
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": ece(p, y),
        "n": len(y),
    }


@dataclass
class MethodChoice:
    """Which method was chosen, why, and every candidate's held-out scores."""

    method: str
    reason: str
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)


def choose_method(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    methods: tuple[str, ...] = METHODS,
    held_out_fraction: float = 0.3,
    min_isotonic_samples: int = 1000,
    C: float = 1.0,
    seed: int = 0,
) -> MethodChoice:
    """Fit each method on part of the requests, score it on the held-out rest, pick the best eligible.

    Eligible: ``isotonic`` only with one signal; isotonic maps only with >= ``min_isotonic_samples``
    fitting samples. Best: lowest held-out log-loss, then Brier. Falls back to ``logistic`` when the
    held-out part is too small to compare (fewer than two requests or one outcome only).
    """
    held = split_by_group(np.asarray(groups), held_out_fraction, salt=f"method-{seed}")
    fit = ~held
    n_fit = int(fit.sum())
    cands: dict[str, dict[str, Any]] = {}
    y_held = y[held]
    comparable = held.any() and fit.any() and y_held.min() != y_held.max() and y[fit].min() != y[fit].max()
    for method in methods:
        entry: dict[str, Any] = {"eligible": True, "why": ""}
        if method == "isotonic" and X.shape[1] != 1:
            entry.update(eligible=False, why=f"needs one signal, have {X.shape[1]}")
        elif "isotonic" in method and n_fit < min_isotonic_samples:
            entry.update(
                eligible=False, why=f"{n_fit} fitting samples < {min_isotonic_samples}: isotonic overfits"
            )
        if comparable and not (method == "isotonic" and X.shape[1] != 1):
            try:
                est = fit_estimator(X[fit], y[fit], method, groups=groups[fit], C=C, seed=seed)
                entry.update(scores(sklearn_proba(est, X[held]), y_held))
            except InputError as exc:
                entry.update(eligible=False, why=str(exc))
        cands[method] = entry
    eligible = [m for m, e in cands.items() if e["eligible"] and "log_loss" in e]
    if not comparable or not eligible:
        why = "held-out part too small to compare methods" if not comparable else "no method eligible"
        return MethodChoice("logistic", f"logistic (sigmoid) by default: {why}", cands)
    best = min(eligible, key=lambda m: (cands[m]["log_loss"], cands[m]["brier"]))
    others = ", ".join(f"{m} {cands[m]['log_loss']:.4f}" for m in eligible if m != best)
    reason = f"{best}: lowest held-out log-loss {cands[best]['log_loss']:.4f} on {int(held.sum())} attempts"
    reason += f" (vs {others})" if others else ""
    skipped = [f"{m} ({e['why']})" for m, e in cands.items() if not e["eligible"]]
    if skipped:
        reason += "; not eligible: " + "; ".join(skipped)
    return MethodChoice(best, reason, cands)
