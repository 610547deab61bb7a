"""Signals of logged attempts, as the live loop would have seen them online.

Replay (``ade-replay``, threshold calibration, the bench) needs, for every logged attempt, the
calibrated confidence the loop would have computed: the attempt's cheap scores plus, when a critique
head is loaded and the attempt's image was stored, the critique probability, mapped through the
calibrator. A one-step preview's confidence is the calibrator's cheap-score map applied to the
preview's scores (logged as ``preview_<name>``); the pruning threshold is chosen on that same
quantity, so live and replay agree. The run-time half (feature names, the first stage, the preview
confidence) is ``ade_runtime.policy.signals``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.images import open_rgb
from ade_runtime.policy.session import Key
from ade_runtime.policy.signals import (
    CRITIQUE_FEATURE,
    DERIVED_SCORES,
    PREVIEW_PREFIX,
    first_stage_features,
    preview_confidence,
    reads_verifier,
)
from ade_runtime.traces.records import Attempt, EditRecord


def attempt_features(attempt: Attempt, critique_p: float | None = None) -> dict[str, float]:
    """The cheap scores of an attempt (previews and derived values left out) plus the critique."""
    feats = {
        k: float(v)
        for k, v in attempt.scores.items()
        if not k.startswith(PREVIEW_PREFIX) and k not in DERIVED_SCORES
    }
    if critique_p is not None:
        feats[CRITIQUE_FEATURE] = float(critique_p)
    return feats


def preview_features(attempt: Attempt) -> dict[str, float] | None:
    """The scores of the attempt's one-step preview under their plain names, or None if not logged."""
    feats = {
        k[len(PREVIEW_PREFIX) :]: float(v) for k, v in attempt.scores.items() if k.startswith(PREVIEW_PREFIX)
    }
    return feats or None


def cheap_scores(attempt: Attempt) -> dict[str, float]:
    """What the critique (and the cascade's first stage) may read of an attempt: its cheap scores."""
    return first_stage_features(attempt_features(attempt))


def critique_signals(
    record: EditRecord, critique: Any, batch_size: int = 32
) -> tuple[dict[Key, float], dict[Key, bool] | None]:
    """The critique's p_pass of every attempt whose image was stored, and its refine-or-fresh choice
    (``CritiquePredictor.should_refine``; None when its threshold is 0, i.e. it always refines).

    The head reads the attempt's cheap scores as the live loop passes them. Attempts with the same
    image and scores (a refinement that changed nothing, identical samples) are critiqued once.
    """
    todo = [a for a in record.attempts if a.image is not None]
    if critique is None or not todo:
        return {}, None
    rule = float(getattr(getattr(critique, "config", None), "refine_threshold", 0.0) or 0.0) > 0.0
    groups: dict[tuple, list[Attempt]] = {}
    for a in todo:
        groups.setdefault((a.image, tuple(sorted(cheap_scores(a).items()))), []).append(a)
    source = open_rgb(record.resolve(record.source_image))
    p: dict[Key, float] = {}
    refine: dict[Key, bool] = {}
    keys = list(groups)
    for i in range(0, len(keys), batch_size):
        chunk = keys[i : i + batch_size]
        results = critique.predict_batch(
            [source] * len(chunk),
            [open_rgb(record.resolve(image)) for image, _ in chunk],
            [record.instruction] * len(chunk),
            scores=[dict(scores) for _, scores in chunk],
        )
        for key, res in zip(chunk, results, strict=True):
            for same in groups[key]:
                p[same.key] = float(res.p_pass)
                if rule:
                    refine[same.key] = bool(critique.should_refine(res))
    return p, (refine if rule else None)


@dataclass(frozen=True)
class AttemptSignals:
    """What replay knows of a record's attempts, as the live loop computed them online.

    ``confidence``: calibrated P(pass) per attempt key; ``preview``: the confidence of its one-step
    preview (None: no preview scores logged); ``first_stage``: the confidence from the cheap signals
    alone, given when the calibrator reads the expensive verifier (the cascade's stage 1);
    ``refine_ok``: the critique's refine-or-fresh choice (None: always refine).
    """

    confidence: dict[Key, float]
    preview: dict[Key, float] | None = None
    first_stage: dict[Key, float] | None = None
    refine_ok: dict[Key, bool] | None = None


def record_signals(
    record: EditRecord,
    calibrator: Any,
    critique: Any = None,
    critique_p: Mapping[Key, float] | None = None,
    refine_ok: Mapping[Key, bool] | None = None,
) -> AttemptSignals:
    """The ``AttemptSignals`` of every attempt of ``record``.

    ``critique_p`` (and the critique's ``refine_ok``) may be passed precomputed (e.g. cached);
    otherwise they are computed with ``critique`` when given. Without a calibrator the confidence is
    the critique probability where there is one (the loop's documented fallback), else NaN. The
    first-stage confidence (the cheap signals only) is given when the calibrator reads the expensive
    verifier's score (``vlm``), so replay can run the cascade and charge each verifier call.
    """
    if critique_p is None:
        critique_p, computed = critique_signals(record, critique) if critique is not None else ({}, None)
        refine_ok = refine_ok if refine_ok is not None else computed
    conf: dict[Key, float] = {}
    prev: dict[Key, float] = {}
    first: dict[Key, float] | None = {} if reads_verifier(calibrator) else None
    for a in record.attempts:
        cp = critique_p.get(a.key)
        feats = attempt_features(a, cp)
        if calibrator is not None:
            conf[a.key] = float(calibrator.predict_proba(feats))
            if first is not None:
                first[a.key] = float(calibrator.predict_proba(first_stage_features(feats)))
        else:
            conf[a.key] = float(cp) if cp is not None else float("nan")
        pc = preview_confidence(calibrator, preview_features(a))
        if pc is not None:
            prev[a.key] = pc
    return AttemptSignals(conf, prev or None, first, dict(refine_ok) if refine_ok is not None else None)


def card_prediction(record: EditRecord, card: Any, image: Image.Image | None = None) -> Any:
    """CARD's prediction (``BudgetPrediction``) for a logged request, as the live loop made it.

    The record's ``category`` reaches CARD only where the live request carried one (its trace says
    ``meta.ade.card.budget_source == "prior:given"``): a dataset's labels (the testbed's, a labelling
    job's) are not something production requests have, and a replay must not credit them.
    """
    cfg = getattr(card, "config", None)
    ade = (record.meta or {}).get("ade") if isinstance(record.meta, dict) else None
    card_log = ade.get("card") if isinstance(ade, dict) else None
    given = isinstance(card_log, dict) and card_log.get("budget_source") == "prior:given"
    category = record.category if given else None
    table_only = getattr(cfg, "is_prior", False) and (not getattr(cfg, "categories", None) or given)
    img = image if image is not None or table_only else open_rgb(record.resolve(record.source_image))
    return card.predict(record.instruction, img, category=category)


def card_budget(
    record: EditRecord,
    card: Any,
    quantile: float,
    image: Image.Image | None = None,
    card_cap: int | None = None,
) -> tuple[int, int]:
    """CARD's attempt budget (at ``quantile``; a hopeless request gets ``card_cap`` when set)
    and reasoning tokens for a logged request."""
    return card_prediction(record, card, image).plan(quantile, card_cap=card_cap)
