"""``ade-train refine-rule``: when to refine a failing attempt and when to start a fresh candidate.

Refinement from the critique's feedback helps when the critique knows where the flaw is; live, on
the testbed, refinements written from a weak critique scored below fresh samples. The runtime rule
is ``ade_runtime.predictors.critique.should_refine``: refine when the critique's pointing
confidence (the top flaw region's max P(any flaw)) reaches ``CritiqueConfig.refine_threshold``
(default 0: always refine). This module fits that threshold.

Data: traces whose refinements the critique itself wrote (``ade-collect --predictors EXPORT``,
then judged with ``ade-judge``). Each judged failing attempt that has a refinement (the next round
of the same candidate and reasoning level) is one case:

- ``confidence``: the critique's pointing confidence on that attempt (recomputed from its image);
- ``refined``: the judge's outcome of the refinement;
- ``fresh``: what a fresh candidate scores instead, the mean outcome of the request's first-round
  attempts of the other candidates at the same reasoning level.

The fitted threshold maximises the mean outcome of "refine if confidence >= threshold, else
fresh" over the cases (ties: the lowest threshold, the closest to the default). The report also
gives a two-fold cross-fitted value (folds by request), so the gain is measured on requests the
threshold was not chosen on. ``--write`` stores the threshold in the export's critique artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.errors import ADEError, InputError, TraceError
from ade_runtime.images import open_rgb
from ade_runtime.traces import TraceDataset
from ade_runtime.traces.records import EditRecord

METRICS = ("score", "pass")


@dataclass(frozen=True)
class RefineCase:
    """One failing attempt that was refined: the critique's confidence and both outcomes."""

    record_id: str
    confidence: float
    refined: float
    fresh: float


def _outcome(judge: Any, metric: str) -> float:
    return float(judge.score) if metric == "score" else float(bool(judge.passed))


def refine_cases(
    records: Iterable[EditRecord], critique: Any, metric: str = "score"
) -> tuple[list[RefineCase], Counter]:
    """The cases of a judged trace dataset, and the failing attempts skipped (by reason)."""
    if metric not in METRICS:
        raise InputError(f"metric={metric!r}: use one of {METRICS}")
    cases: list[RefineCase] = []
    skipped: Counter = Counter()
    for rec in records:
        by_key = {a.key: a for a in rec.attempts}
        source = None
        for att in rec.attempts:
            if att.judge is None or att.judge.passed:
                continue
            c, r, t = att.key
            child = by_key.get((c, r + 1, t))
            if child is None:
                continue  # the last round: nothing was refined
            if child.judge is None:
                skipped["refinement_not_judged"] += 1
                continue
            if att.image is None:
                skipped["no_image"] += 1
                continue
            fresh = [
                _outcome(a.judge, metric)
                for a in rec.attempts
                if a.round == 0 and a.reasoning_tokens == t and a.candidate != c and a.judge is not None
            ]
            if not fresh:
                skipped["no_fresh_candidate"] += 1
                continue
            if source is None:
                source = open_rgb(rec.resolve(rec.source_image))
            crit = critique.predict(
                source, open_rgb(rec.resolve(att.image)), rec.instruction, scores=att.scores
            )
            cases.append(
                RefineCase(
                    record_id=rec.id,
                    confidence=crit.pointing_confidence,
                    refined=_outcome(child.judge, metric),
                    fresh=float(np.mean(fresh)),
                )
            )
    return cases, skipped


def rule_value(cases: Sequence[RefineCase], threshold: float) -> float:
    """Mean outcome of "refine when confidence >= threshold, else a fresh candidate"."""
    if not cases:
        return float("nan")
    return float(np.mean([c.refined if c.confidence >= threshold else c.fresh for c in cases]))


def _rule_values(cases: Sequence[RefineCase], thresholds: np.ndarray) -> np.ndarray:
    """``rule_value`` at every threshold at once (sorted prefix sums: O(n log n), not O(n x thresholds))."""
    order = np.argsort([c.confidence for c in cases], kind="stable")
    conf = np.array([cases[i].confidence for i in order], dtype=float)
    fresh = np.concatenate([[0.0], np.cumsum([cases[i].fresh for i in order])])
    refined = np.concatenate([[0.0], np.cumsum([cases[i].refined for i in order])])
    below = np.searchsorted(conf, thresholds, side="left")  # cases with confidence < threshold
    return (fresh[below] + refined[-1] - refined[below]) / len(cases)


class RefineRule:
    """Chooses ``threshold_`` among ``candidates_`` (0, the midpoints between the cases' distinct
    confidences, 1) by the mean outcome ``values_`` on the cases it is fitted on."""

    def fit(self, cases: Sequence[RefineCase]) -> RefineRule:
        if not cases:
            raise InputError("no refined failing attempt to fit the refine rule on")
        conf = np.unique([c.confidence for c in cases])
        mids = (conf[1:] + conf[:-1]) / 2 if len(conf) > 1 else np.zeros(0)
        self.candidates_ = np.unique(np.concatenate([[0.0], mids, [1.0]]))
        self.values_ = _rule_values(cases, self.candidates_)
        best = float(self.values_.max())
        # ties go to the lowest threshold: the closest to the default (always refine)
        self.threshold_ = float(self.candidates_[np.flatnonzero(self.values_ >= best - 1e-12)[0]])
        return self

    def predict(self, confidences: Sequence[float]) -> np.ndarray:
        """True where the rule refines."""
        return np.asarray(confidences, dtype=float) >= self.threshold_


def _fold(record_id: str) -> int:
    return hashlib.blake2b(record_id.encode(), digest_size=2).digest()[0] % 2


def fit_report(cases: Sequence[RefineCase]) -> dict[str, Any]:
    """The fitted threshold, the values of always / never / the rule, and a cross-fitted value."""
    rule = RefineRule().fit(cases)
    folds = [[c for c in cases if _fold(c.record_id) == k] for k in (0, 1)]
    cross = []
    for k in (0, 1):
        train, test = folds[1 - k], folds[k]
        if train and test:
            threshold = RefineRule().fit(train).threshold_  # fitted once per fold
            cross.extend(c.refined if c.confidence >= threshold else c.fresh for c in test)
    return {
        "threshold": rule.threshold_,
        "cases": len(cases),
        "requests": len({c.record_id for c in cases}),
        "always_refine": rule_value(cases, 0.0),
        "never_refine": float(np.mean([c.fresh for c in cases])),
        "rule": rule_value(cases, rule.threshold_),
        "rule_cross_fitted": float(np.mean(cross)) if cross else None,  # None: a fold has no case
        "refined_share": float(rule.predict([c.confidence for c in cases]).mean()),
        "candidates": [round(float(t), 6) for t in rule.candidates_],
        "values": [round(float(v), 6) for v in rule.values_],
    }


def write_threshold(export_dir: str | Path, threshold: float, report: dict[str, Any]) -> Path:
    """Re-save the export's critique with ``refine_threshold`` set (weights and metrics kept)."""
    from ade_runtime.artifacts import CRITIQUE_KIND, CRITIQUE_NAME, load_artifact
    from ade_runtime.predictors.critique import CritiquePredictor

    critique = CritiquePredictor.from_pretrained(export_dir)
    meta = load_artifact(export_dir, CRITIQUE_NAME, kind=CRITIQUE_KIND).meta
    critique.config.refine_threshold = float(threshold)
    metrics = dict(meta.get("metrics") or {})
    metrics.update(
        {f"refine/{k}": v for k, v in report.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    )
    return critique.save_pretrained(
        export_dir, metrics=metrics, data_fingerprint=meta.get("data_fingerprint")
    )


# ---------------------------------------------------------------------------------------------------
# CLI


def fit_part(cases: Sequence[RefineCase], certify_fraction: float, seed: int = 0) -> list[RefineCase]:
    """The cases of requests outside the certify part ``ade-train calibrate`` cuts with this
    ``certify_fraction`` and ``seed`` (``calibrate.decision.certify_mask``, stable per request id)."""
    from ade_train.calibrate.decision import certify_mask

    ids = sorted({c.record_id for c in cases})
    held = {i for i, m in zip(ids, certify_mask(ids, certify_fraction, seed), strict=True) if m}
    return [c for c in cases if c.record_id not in held]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-train refine-rule",
        description="Fit the critique's refine-or-fresh threshold on judged traces collected with "
        "ade-collect --predictors EXPORT (the critique wrote the refinements).",
    )
    p.add_argument("--data", required=True, help="judged trace dataset from ade-collect + ade-judge")
    p.add_argument("--predictors", required=True, help="export directory holding the critique (OUT/export)")
    p.add_argument("--metric", choices=METRICS, default="score", help="judge outcome to maximise")
    p.add_argument("--write", action="store_true", help="store the threshold in the export's critique")
    p.add_argument(
        "--fit-part-of",
        type=float,
        default=None,
        metavar="CERTIFY_FRACTION",
        help="fit on the fit part only: leave out the requests ade-train calibrate --split all will certify "
        "on with this --certify-fraction (and --seed), so the certificate's requests stay unseen",
    )
    p.add_argument("--seed", type=int, default=0, help="calibrate's split seed (with --fit-part-of)")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from ade_runtime.predictors.critique import CritiquePredictor

        data = Path(args.data)
        if not data.is_dir():
            raise InputError(f"--data {data}: no such directory; give a trace dataset (ade-collect --out)")
        critique = CritiquePredictor.from_pretrained(args.predictors)
        cases, skipped = refine_cases(TraceDataset(data, images="header"), critique, args.metric)
        n_all = len(cases)
        if args.fit_part_of is not None:
            cases = fit_part(cases, args.fit_part_of, args.seed)
        if not cases:
            raise TraceError(
                f"--data {data}: no judged failing attempt with a judged refinement (skipped "
                f"{dict(skipped) or 'none'}); collect with --rounds >= 2 and label it with ade-judge"
            )
        report = fit_report(cases)
        report["skipped"] = dict(skipped)
        report["cases_left_to_certify"] = n_all - len(cases)
        if args.write:
            report["written"] = str(write_threshold(args.predictors, report["threshold"], report))
    except ADEError as exc:  # bad input, traces or artifact: one line, no traceback
        print(f"ade-train refine-rule: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, sort_keys=True))
    return 0
