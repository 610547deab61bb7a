"""Plots of a calibration run: reliability diagrams and the compute-quality curve of the threshold search.

Reliability diagrams follow scikit-learn's ``CalibrationDisplay`` (sklearn/calibration.py): mean
predicted probability against the observed pass rate per equal-width bin, with the diagonal as
perfect calibration and a histogram of the predictions below. The compute-quality curve shows
every replayed candidate policy (compute per request vs mean judge score), the feasible ones, their
Pareto front, the quality target and the chosen point. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.artifacts import atomic_write_bytes
from ade_train.pareto import pareto_order


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def reliability_bins(
    p: np.ndarray, y: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean prediction, observed pass rate, count) of each non-empty equal-width bin."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    mean_p, rate, count = [], [], []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            mean_p.append(p[m].mean())
            rate.append(y[m].mean())
            count.append(int(m.sum()))
    return np.array(mean_p), np.array(rate), np.array(count)


def plot_reliability(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str, n_bins: int = 10
) -> Path:
    """One panel per curve: ``{label: (predictions, labels, ece)}``, e.g. "before" and "after"."""
    plt = _pyplot()
    n = max(1, len(curves))
    fig, axes = plt.subplots(
        2, n, figsize=(4.2 * n, 5.6), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    for i, (label, (p, y, err)) in enumerate(curves.items()):
        ax, hist = axes[0, i], axes[1, i]
        mp, rate, _ = reliability_bins(p, y, n_bins)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
        ax.plot(mp, rate, marker="o", label=f"{label} (ECE {err:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(pass)", ylabel="observed pass rate")
        ax.set_title(f"{title}: {label}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        hist.hist(np.asarray(p), bins=n_bins, range=(0, 1), color="C0", alpha=0.7)
        hist.set(xlim=(0, 1), xlabel="predicted P(pass)", ylabel="attempts")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_compute_quality(
    candidates: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    target: float,
    reference: Mapping[str, Any],
    compute_label: str,
) -> Path:
    """Every candidate's compute vs mean judge score, feasible in colour, the chosen one starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs = np.array([float(c["compute"]) for c in candidates])
    ys = np.array([float(c["mean_score"]) for c in candidates])
    ok = np.array([bool(c["feasible"]) for c in candidates])
    ax.scatter(xs[~ok], ys[~ok], s=12, color="lightgrey", label="below target")
    ax.scatter(xs[ok], ys[ok], s=14, color="C0", label="meets target")
    front = pareto_order(xs, ys)[::-1]  # least compute first, along the x axis
    ax.plot(xs[front], ys[front], color="C0", lw=1, alpha=0.6, label="Pareto front")
    ax.axhline(target, ls="--", color="C3", lw=1, label=f"target {target:.3f}")
    ref_x = reference.get("compute")
    if ref_x is not None and np.isfinite(ref_x):
        ax.scatter(
            [ref_x],
            [reference["mean_score"]],
            marker="s",
            color="C3",
            label=reference.get("policy", "reference"),
        )
    for i, c in enumerate(candidates):
        if c.get("chosen"):
            ax.scatter(
                [xs[i]], [ys[i]], marker="*", s=220, color="C2", edgecolor="black", zorder=5, label="chosen"
            )
    ax.set(xlabel=compute_label, ylabel="mean judge score", title="Threshold search: compute vs quality")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
