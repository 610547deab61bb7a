"""Run-time signal names and rules, shared by the live loop and replay.

The feature names the calibrator reads (the cheap scores, ``critique``, the expensive verifier's
``vlm``), the cascade's first stage (the cheap features alone) and a one-step preview's confidence
(the calibrator's cheap-score map). Signals of logged attempts are ``ade_runtime.offline.signals``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PREVIEW_PREFIX = "preview_"
CRITIQUE_FEATURE = "critique"
VLM_FEATURE = "vlm"  # what the expensive verifier (a VLM reward model) writes; not a cheap score
# What the runtime itself logs beside the cheap scores: its confidence (an output) and the critique
# probability of the model that served the request (replaced by the current critique's, when any).
DERIVED_SCORES = ("confidence", CRITIQUE_FEATURE)


def preview_confidence(calibrator: Any, scores: Mapping[str, float] | None) -> float | None:
    """Confidence of a preview through the calibrator's cheap-score map; None when it cannot say."""
    if calibrator is None or not scores:
        return None
    feats = {k: v for k, v in scores.items() if k not in (CRITIQUE_FEATURE, VLM_FEATURE)}
    if calibrator.uses_fallback(feats) == "missing":
        return None
    p = float(calibrator.predict_proba(feats))
    return p if math.isfinite(p) else None


def reads_verifier(calibrator: Any) -> bool:
    """Whether the calibrator's primary map reads the expensive verifier's score (a cascade)."""
    return calibrator is not None and VLM_FEATURE in getattr(calibrator, "feature_names", ())


def first_stage_features(features: Mapping[str, float]) -> dict[str, float]:
    """The cheap part of an attempt's features: what the cascade knows before the expensive verifier."""
    return {k: v for k, v in features.items() if k != VLM_FEATURE}
