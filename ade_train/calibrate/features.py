"""The online signals of every attempt of the calibration split, computed once per job.

For each attempt: its cheap scores (``attempt.scores``, e.g. clip_t / clip_i), the exported critique
head's ``p_pass`` on its image (missing when the attempt has no image or the critique fails: the
calibrator's fallback then answers), its preview scores (``preview_<name>``) and its judge label.
Features, previews and confidences come from ``ade_runtime.policy.signals``, the functions the live
loop and ``ade-replay`` use, so the thresholds are chosen on exactly the confidences the loop will
compute. ``SignalTable`` adds the training matrices for ``calibrate.fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ade_runtime.errors import ADEError, InputError
from ade_runtime.offline.signals import (
    AttemptSignals,
    attempt_features,
    card_prediction,
    critique_signals,
    preview_features,
    record_signals,
)
from ade_runtime.policy.signals import CRITIQUE_FEATURE
from ade_runtime.predictors.calibration import Calibrator
from ade_runtime.progress import progress
from ade_runtime.traces.records import EditRecord

Key = tuple[int, int, int]


@dataclass
class SignalTable:
    """Signals per attempt (``features[rec_id][key]``), labels of the judged ones, and previews."""

    records: list[EditRecord]
    score_names: list[str]
    features: dict[str, dict[Key, dict[str, float]]]
    labels: dict[str, dict[Key, int]]
    critique_p: dict[str, dict[Key, float]]
    has_previews: bool
    notes: list[str] = field(default_factory=list)
    refine: dict[str, dict[Key, bool] | None] = field(default_factory=dict)  # critique's refine-or-fresh

    def _rows(self, names: Sequence[str]) -> list[tuple[str, dict[str, float], int]]:
        rows = []
        for rec in self.records:
            for key, label in self.labels[rec.id].items():
                feats = self.features[rec.id][key]
                if all(math.isfinite(feats.get(n, math.nan)) for n in names):
                    rows.append((rec.id, feats, label))
        return rows

    def matrix(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X [N, F], 0/1 labels and request ids of the judged attempts whose ``names`` are all finite."""
        rows = self._rows(names)
        X = np.array([[f[n] for n in names] for _, f, _ in rows], dtype=np.float64).reshape(
            len(rows), len(names)
        )
        y = np.array([lab for _, _, lab in rows], dtype=np.int64)
        groups = np.array([rid for rid, _, _ in rows])
        return X, y, groups

    def raw_confidence(self, names: Sequence[str]) -> np.ndarray:
        """The uncalibrated confidence ("before"), aligned with ``matrix(names)``.

        The critique's own p_pass when it is a feature; otherwise the first cheap score rescaled
        to [0, 1] over the split (a cheap score is not a probability until calibrated).
        """
        X, _, _ = self.matrix(names)
        if CRITIQUE_FEATURE in names:
            return X[:, list(names).index(CRITIQUE_FEATURE)]
        col = X[:, 0]
        lo, hi = (col.min(), col.max()) if len(col) else (0.0, 1.0)
        return np.clip((col - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.full_like(col, 0.5)

    def subset(self, ids: set[str]) -> SignalTable:
        """The same signals restricted to the requests ``ids`` (no recomputation)."""
        recs = [r for r in self.records if r.id in ids]
        pick = lambda d: {r.id: d[r.id] for r in recs}  # noqa: E731
        return SignalTable(
            recs, self.score_names, pick(self.features), pick(self.labels), pick(self.critique_p),
            self.has_previews, list(self.notes), {r.id: self.refine.get(r.id) for r in recs},
        )  # fmt: skip

    def signals(self, calibrator: Calibrator) -> Callable[[EditRecord], AttemptSignals]:
        """``rec -> AttemptSignals`` (confidences, previews, first stage, refine-or-fresh), as the loop computes them."""

        def fn(rec: EditRecord) -> AttemptSignals:
            return record_signals(
                rec, calibrator, critique_p=self.critique_p[rec.id], refine_ok=self.refine.get(rec.id)
            )

        return fn

    def card_fn(self, card: Any) -> Callable[[EditRecord], Any]:
        """``rec -> BudgetPrediction`` from the exported CARD on the request's instruction and source."""

        def fn(rec: EditRecord) -> Any:
            return card_prediction(rec, card)

        return fn


def _default_score_names(records: Sequence[EditRecord]) -> list[str]:
    common: set[str] | None = None
    for rec in records:
        for a in rec.attempts:
            if a.judge is not None:
                names = set(attempt_features(a))
                common = names if common is None else common & names
    return sorted(common or ())


def build_signal_table(
    records: Sequence[EditRecord], score_names: Sequence[str] | None, critique: Any = None
) -> SignalTable:
    """Collect the signals of every attempt; ``critique`` is a ``CritiquePredictor`` or None."""
    records = list(records)
    if not records:
        raise InputError("the calibration split is empty; give a dataset with more requests")
    names = list(score_names) if score_names is not None else _default_score_names(records)
    if not names and critique is None:
        raise InputError(
            "no online signal to calibrate: the judged attempts share no cheap score (attempt.scores) and "
            "no critique is exported; log scores such as clip_t or train the critique first"
        )
    features: dict[str, dict[Key, dict[str, float]]] = {}
    labels: dict[str, dict[Key, int]] = {}
    critique_p: dict[str, dict[Key, float]] = {}
    refine: dict[str, dict[Key, bool] | None] = {}
    failed = no_image = 0
    has_previews = False
    desc = "calibrate: critique on every attempt" if critique is not None else "calibrate: features"
    for rec in progress(records, desc=desc):
        cp: dict[Key, float] = {}
        rf: dict[Key, bool] | None = None
        if critique is not None:
            no_image += sum(a.image is None for a in rec.attempts)
            try:
                cp, rf = critique_signals(rec, critique)
            except (ADEError, OSError, ValueError, RuntimeError):
                failed += sum(a.image is not None for a in rec.attempts)  # missing: the fallback answers
        critique_p[rec.id] = cp
        refine[rec.id] = rf
        features[rec.id] = {a.key: attempt_features(a, cp.get(a.key)) for a in rec.attempts}
        labels[rec.id] = {a.key: int(a.judge.passed) for a in rec.attempts if a.judge is not None}
        has_previews = has_previews or any(preview_features(a) for a in rec.attempts)
    notes = []
    if critique is not None and (failed or no_image):
        notes.append(
            f"critique missing for {no_image} attempts without image and {failed} failed: fallback used"
        )
    table = SignalTable(records, names, features, labels, critique_p, has_previews, notes, refine)
    if not any(table.labels.values()):
        raise InputError("no judged attempt in the calibration split; run ade-judge on the traces first")
    return table
