"""Held-out evaluation of the critique head, side by side with a gradient-boosted-trees baseline.

What selection needs is a ranking *within* a request: among the attempts of one request, the
passing ones should get the higher p_pass. ``within_request_auroc`` is the AUROC of p_pass among
one request's attempts, averaged over the requests that have both passing and failing attempts;
the overall AUROC also rewards telling easy requests from hard ones, which selection never uses.
Calibration is ECE (10 equal-width bins, ``ade_train.calibrate.fit.ece``) and the Brier score.

The baseline (``TreesBaseline``) is scikit-learn's ``HistGradientBoostingClassifier`` on
difference-map features: |attempt - source| pooled on a coarse grid (mean per cell and channel,
max per cell) plus a few global statistics, and the attempt's cheap scores (CLIP-T / CLIP-I).
It is trained on the same training split as the head and evaluated on the same test attempts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ade_runtime.stats import auroc
from ade_train.calibrate.fit import ece
from ade_train.critique.examples import CritiqueExample

TREES_GRID = 6  # cells per side of the pooled difference map
# the cheap scores the baseline may read (an expensive verifier's score, e.g. a VLM's, is not one)
CHEAP_SCORES = ("clip_i", "clip_t")


def within_request_auroc(
    p_pass: Sequence[float], passed: Sequence[bool], groups: Sequence[str]
) -> tuple[float, int]:
    """(mean AUROC among each request's attempts, number of requests with both outcomes)."""
    p, y, g = np.asarray(p_pass, dtype=float), np.asarray(passed).astype(bool), np.asarray(groups)
    values = []
    for key in np.unique(g):
        m = g == key
        if y[m].any() and not y[m].all():
            values.append(auroc(p[m], y[m]))
    return (float(np.mean(values)) if values else float("nan")), len(values)


def selection_metrics(
    p_pass: Sequence[float], passed: Sequence[bool], groups: Sequence[str]
) -> dict[str, float]:
    """within_auroc (+ its request count), auroc, ece and brier of probabilities on one split."""
    p, y = np.asarray(p_pass, dtype=float), np.asarray(passed).astype(float)
    within, n_req = within_request_auroc(p, y, groups)
    out = {
        "within_auroc": within,
        "within_requests": float(n_req),
        "auroc": auroc(p, y),
        "ece": ece(p, y) if len(p) else float("nan"),
        "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
    }
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def _pixels(path, cache: dict) -> np.ndarray:
    if path not in cache:
        with Image.open(path) as im:
            cache[path] = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return cache[path]


def _pool(diff: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell mean [grid, grid, 3] and max [grid, grid] of an H x W x 3 difference map."""
    h, w, _ = diff.shape
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    mean = np.zeros((grid, grid, 3), np.float32)
    peak = np.zeros((grid, grid), np.float32)
    for i in range(grid):
        for j in range(grid):
            cell = diff[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            mean[i, j] = cell.mean((0, 1))
            peak[i, j] = cell.max()
    return mean, peak


def difference_features(
    examples: Sequence[CritiqueExample], score_names: Sequence[str], grid: int = TREES_GRID
) -> np.ndarray:
    """One row per example: pooled |attempt - source| cells, global change statistics, cheap scores."""
    cache: dict = {}
    rows = []
    for ex in examples:
        src, att = _pixels(ex.source, cache), _pixels(ex.attempt, cache)
        if src.shape != att.shape:  # another size: compare at the attempt's size
            with Image.open(ex.source) as im:
                src = np.asarray(im.convert("RGB").resize(att.shape[1::-1]), dtype=np.float32) / 255.0
        diff = np.abs(att - src)
        mean, peak = _pool(diff, grid)
        changed = diff.max(-1) > 0.1
        stats = [diff.mean(), diff.max(), changed.mean(), float(np.sort(peak.ravel())[-3:].mean())]
        scores = dict(ex.scores)
        cheap = [float(scores.get(name, np.nan)) for name in score_names]
        rows.append(np.concatenate([mean.ravel(), peak.ravel(), stats, cheap]))
    return np.asarray(rows, dtype=np.float32)


class TreesBaseline:
    """HistGradientBoostingClassifier on difference-map features + cheap scores (sklearn-style)."""

    def __init__(
        self,
        seed: int = 0,
        max_iter: int = 300,
        grid: int = TREES_GRID,
        cheap_scores: Sequence[str] = CHEAP_SCORES,
    ) -> None:
        self.seed, self.max_iter, self.grid = int(seed), int(max_iter), int(grid)
        self.cheap_scores = tuple(cheap_scores)
        self.score_names: tuple[str, ...] = ()
        self.model = None

    def fit(self, examples: Sequence[CritiqueExample]) -> TreesBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        labels = np.array([ex.passed for ex in examples], dtype=int)
        if len(set(labels.tolist())) < 2:
            raise ValueError("the trees baseline needs passing and failing training attempts")
        seen = {k for ex in examples for k, _ in ex.scores}
        self.score_names = tuple(k for k in self.cheap_scores if k in seen)
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.05, early_stopping=True, random_state=self.seed
        )
        weights = np.array([ex.weight for ex in examples], dtype=float)
        self.model.fit(
            difference_features(examples, self.score_names, self.grid), labels, sample_weight=weights
        )
        return self

    def predict_proba(self, examples: Sequence[CritiqueExample]) -> np.ndarray:
        """P(pass) per example."""
        if self.model is None:
            raise RuntimeError("TreesBaseline.fit() has not run")
        if not examples:
            return np.zeros(0)
        features = difference_features(examples, self.score_names, self.grid)
        return self.model.predict_proba(features)[:, 1]


def trees_metrics(
    train: Sequence[CritiqueExample],
    test: Sequence[CritiqueExample],
    seed: int = 0,
    cheap_scores: Sequence[str] = CHEAP_SCORES,
) -> dict[str, float]:
    """The baseline's ``selection_metrics`` on ``test`` after fitting it on ``train``."""
    trees = TreesBaseline(seed=seed, cheap_scores=cheap_scores).fit(train)
    return selection_metrics(
        trees.predict_proba(test), [ex.passed for ex in test], [ex.record_id for ex in test]
    )
