"""VIEScore judges: a model's SC / PQ answers -> a ``Judge`` label (score, pass, flaws) or a failure.

The prompts, the answer parsing, the box conventions and the score mapping O = sqrt(SC * PQ) / 10
live in ``ade_runtime.verifiers.viescore``, shared with the runtime's online VLM verifiers; this
module adds what labelling needs: ``pass`` is O / 10 >= ``pass_threshold``, the flaws become the
label's, invalid boxes are counted in the label's ``dropped_flaws``, a malformed answer becomes a
recorded ``JudgeFailure`` that keeps the raw text.
"""

from __future__ import annotations

from typing import Any

from ade_runtime.traces.records import Judge as JudgeLabel
from ade_runtime.verifiers.viescore import (
    BOX_FORMATS,
    DEFAULT_PASS_THRESHOLD,
    Answer,
    MalformedAnswer,
    answer_flaws,
    normalise_box,
    overall,
    parse_answer,
    parse_pair,
    pq_prompt,
    questions,
    sc_prompt,
    well_formed,
)

from .base import AttemptRef, JudgeFailure, JudgeResult, Usage, make_label

__all__ = [
    "BOX_FORMATS",
    "DEFAULT_PASS_THRESHOLD",
    "Answer",
    "MalformedAnswer",
    "combine",
    "normalise_box",
    "outcome",
    "parse_answer",
    "pq_prompt",
    "questions",
    "sc_prompt",
    "well_formed",
]


def combine(
    sc: Answer,
    pq: Answer,
    *,
    pass_threshold: float = DEFAULT_PASS_THRESHOLD,
    box_format: str = "unit",
    width: float | None = None,
    height: float | None = None,
) -> JudgeLabel:
    """VIEScore O = sqrt(min(SC) * min(PQ)) on 0-10 -> a ``Judge`` label with score O / 10."""
    score, sc_v, pq_v = overall(sc, pq)
    flaws, dropped = answer_flaws(sc, box_format, width, height)
    extra: dict[str, Any] = {"sc": sc_v, "pq": pq_v}
    if dropped:
        extra["dropped_flaws"] = dropped
    return make_label(score, score >= pass_threshold, flaws, **extra)


def outcome(
    ref: AttemptRef,
    texts: list[str],
    usage: Usage,
    *,
    pass_threshold: float = DEFAULT_PASS_THRESHOLD,
    box_format: str = "unit",
    width: float | None = None,
    height: float | None = None,
) -> JudgeResult | JudgeFailure:
    """The answers to ``questions`` (SC, PQ) -> a label, or a ``malformed`` failure keeping the raw text."""
    raw = "\n---\n".join(texts)
    try:
        sc, pq = parse_pair(texts)
    except MalformedAnswer as exc:
        return JudgeFailure(ref, "malformed", str(exc), usage, raw)
    label = combine(sc, pq, pass_threshold=pass_threshold, box_format=box_format, width=width, height=height)
    return JudgeResult(ref, label, usage, raw)
