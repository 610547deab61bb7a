"""VIEScore for one edit: the two prompts, robust parsing of the answers, the score mapping.

One implementation for the runtime's VLM verifiers and ``ade-judge``'s VLM / API judges (which add
labels, flaws and the journal on top, in ``ade_train/judge/viescore.py``).

Follows VIEScore (Ku et al., ACL 2024; TIGER-AI-Lab/VIEScore ``viescore/__init__.py``, task
``tie``): semantic consistency SC asks for [editing success, degree of over-editing] on 0-10 with
the instruction and both images, perceptual quality PQ asks for [naturalness, artifacts] on 0-10
with the edited image only; SC = min, PQ = min, O = sqrt(SC * PQ). ADE's score is O / 10 in
[0, 1]. The SC prompt additionally asks for flaws with boxes (kinds from
``ade_runtime.feedback.FLAW_KINDS``) so that the critique head gets localised labels when the
model can give them.

Box conventions (``box_format``): ``pixels`` = absolute pixels of the edited image as the model saw
it (Qwen2.5-VL grounding), ``norm1000`` = 0..1000 (Qwen2-VL grounding), ``unit`` = 0..1 (API
models are asked for fractions). Everything is normalised to [0, 1]; invalid boxes are dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ade_runtime.feedback import FLAW_KINDS
from ade_runtime.traces.records import Flaw
from ade_runtime.verifiers.base import Verdict

BOX_FORMATS = ("pixels", "norm1000", "unit")
DEFAULT_PASS_THRESHOLD = 0.7

_CONTEXT = (
    "You are a professional digital artist. You evaluate how well an AI image edit was done, "
    "following the rules below. All images are AI-generated, people included.\n"
    "Answer with one JSON object only, no other text. Keep the reasoning short."
)

_BOX_WORDS = {
    "pixels": "in absolute pixel coordinates of the edited (second) image, [x0, y0, x1, y1], origin top-left",
    "norm1000": "as [x0, y0, x1, y1] on a 0-1000 scale of the edited (second) image, origin top-left",
    "unit": "as fractions [x0, y0, x1, y1] between 0 and 1 of the edited (second) image, origin top-left",
}


def sc_prompt(instruction: str, box_format: str = "unit") -> str:
    """The semantic-consistency question; the caller shows the source image, then the edited one."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    return (
        f"{_CONTEXT}\n\nRULES:\nTwo images are given: the first is the original, the second an edited "
        "version of it. Judge how well the editing instruction was carried out in the second image. "
        "The two images may look identical when the edit failed.\n\n"
        "On a scale from 0 to 10, give two scores:\n"
        "- editing success: 0 = the edited image does not follow the instruction at all, "
        "10 = it follows the instruction perfectly;\n"
        "- over-editing: 0 = the edited scene is completely different from the original, "
        "10 = a minimal yet effective edit of the original.\n"
        "List what is wrong as flaws, each with a kind from "
        f"{', '.join(FLAW_KINDS)} and a box {_BOX_WORDS[box_format]}; an empty list if nothing is wrong.\n\n"
        'Output format: {"score": [editing_success, over_editing], "flaws": [{"kind": "...", '
        '"box": [x0, y0, x1, y1]}], "reasoning": "..."}\n\n'
        f"Editing instruction: {instruction}"
    )


def pq_prompt() -> str:
    """The perceptual-quality question; the caller shows the edited image only."""
    return (
        f"{_CONTEXT}\n\nRULES:\nOne AI-generated image is given. Judge how well it was generated.\n\n"
        "On a scale from 0 to 10, give two scores:\n"
        "- naturalness: 0 = the scene looks unnatural (wrong sense of distance, shadows or lighting), "
        "10 = it looks natural;\n"
        "- artifacts: 0 = large distortions, watermarks, scratches, blurred faces, odd body parts or "
        "unharmonised subjects, 10 = no artifacts.\n\n"
        'Output format: {"score": [naturalness, artifacts], "reasoning": "..."}'
    )


def questions(instruction: str, source: Any, output: Any, box_format: str = "unit") -> list[tuple[str, list]]:
    """The two questions of one attempt, in order: SC (source + edited image), then PQ (edited only)."""
    return [(sc_prompt(instruction, box_format), [source, output]), (pq_prompt(), [output])]


class MalformedAnswer(ValueError):
    """The model's answer cannot be read as the requested JSON; the message says what is wrong."""


@dataclass
class Answer:
    """One parsed answer: scores on 0-10 and, for SC, raw flaws (kind, box in the model's units)."""

    scores: list[float]
    flaws: list[tuple[str, Any]] = field(default_factory=list)
    reasoning: str = ""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_SCORE_LIST = re.compile(r'"?score"?\s*:\s*\[([^\]]*)\]', re.I)


def _json_candidates(text: str) -> list[str]:
    """Substrings that may hold the answer object: fenced blocks first, then the outermost braces."""
    out = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        out.append(text[start : end + 1])
    return out


def parse_answer(text: str, n_scores: int = 2) -> Answer:
    """Read ``{"score": [a, b], "flaws": [...], "reasoning": ...}`` from a model's answer text.

    Accepts code fences, text around the object, single numbers, and, as a last resort, a bare
    ``"score": [..]`` list in broken JSON. Raises ``MalformedAnswer`` otherwise.
    """
    if not isinstance(text, str) or not text.strip():
        raise MalformedAnswer("empty answer")
    obj: Any = None
    for cand in _json_candidates(text):
        try:
            obj = json.loads(cand)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(obj, dict):
        m = _SCORE_LIST.search(text)
        if m is None:
            raise MalformedAnswer(f"no JSON object with a 'score' list in the answer: {text[:120]!r}")
        obj = {"score": [s for s in re.split(r"[,\s]+", m.group(1).strip()) if s]}
    lowered = {str(k).lower(): v for k, v in obj.items()}
    raw_scores = lowered.get("score", lowered.get("scores"))
    if isinstance(raw_scores, (int, float, str)):
        raw_scores = [raw_scores]
    if not isinstance(raw_scores, list) or not raw_scores:
        raise MalformedAnswer("the answer has no 'score' list")
    try:
        scores = [float(s) for s in raw_scores]
    except (TypeError, ValueError) as exc:
        raise MalformedAnswer(f"'score' holds a non-number: {raw_scores!r}") from exc
    if len(scores) < n_scores:
        raise MalformedAnswer(f"'score' has {len(scores)} values, expected {n_scores}")
    scores = scores[:n_scores]
    if not all(math.isfinite(s) and 0.0 <= s <= 10.0 for s in scores):
        raise MalformedAnswer(f"'score' values must be in [0, 10], got {scores}")
    flaws: list[tuple[str, Any]] = []
    raw_flaws = lowered.get("flaws") or []
    if isinstance(raw_flaws, list):
        for f in raw_flaws:
            if isinstance(f, dict) and isinstance(f.get("kind"), str):
                flaws.append((f["kind"].strip() or "unknown", f.get("box", f.get("bbox_2d", f.get("bbox")))))
    reasoning = lowered.get("reasoning", "")
    return Answer(scores=scores, flaws=flaws, reasoning=str(reasoning))


def well_formed(text: str) -> bool:
    """True when ``text`` parses as an answer (a caller may stop asking after a malformed one)."""
    try:
        parse_answer(text)
    except MalformedAnswer:
        return False
    return True


def parse_pair(texts: list[str]) -> tuple[Answer, Answer]:
    """The answers to ``questions`` (SC, PQ), parsed; the first malformed one names the problem."""
    answers = [parse_answer(t) for t in texts]
    if len(answers) != 2:
        raise MalformedAnswer(f"expected the SC and PQ answers, got {len(answers)} answer(s)")
    return answers[0], answers[1]


def overall(sc: Answer, pq: Answer) -> tuple[float, float, float]:
    """VIEScore on ADE's scale: (O / 10 in [0, 1], SC, PQ) with SC = min, PQ = min, O = sqrt(SC * PQ)."""
    sc_v, pq_v = min(sc.scores), min(pq.scores)
    return math.sqrt(sc_v * pq_v) / 10.0, sc_v, pq_v


def valid_box(box: Any) -> tuple[float, float, float, float] | None:
    """A normalised (x0, y0, x1, y1) box with 0 <= x0 < x1 <= 1 (same for y), or None."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    vals = (x0, y0, x1, y1)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals) or not (x0 < x1 and y0 < y1):
        return None
    return vals


def normalise_box(
    box: Any, box_format: str, width: float | None = None, height: float | None = None
) -> tuple[float, float, float, float] | None:
    """A model's box in ``box_format`` units -> a valid [0, 1] box, or None when unusable."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        return None
    if box_format == "pixels":
        if not width or not height:
            return None
        vals = [vals[0] / width, vals[1] / height, vals[2] / width, vals[3] / height]
    elif box_format == "norm1000":
        vals = [v / 1000.0 for v in vals]
    # A box touching the border may overshoot by rounding; clip a hair, reject the rest.
    vals = [min(1.0, max(0.0, v)) if -0.01 <= v <= 1.01 else v for v in vals]
    return valid_box(vals)


def answer_flaws(
    sc: Answer, box_format: str = "unit", width: float | None = None, height: float | None = None
) -> tuple[list[Flaw], int]:
    """The SC answer's flaws with boxes normalised to [0, 1], and how many were dropped as invalid."""
    flaws: list[Flaw] = []
    dropped = 0
    for kind, raw_box in sc.flaws:
        box = normalise_box(raw_box, box_format, width, height)
        if box is None:
            dropped += 1
        else:
            flaws.append(Flaw(kind=kind, box=box))
    return flaws, dropped


def verdict_from_answers(
    texts: list[str],
    feature: str,
    seconds: float,
    flops: float | None = None,
    *,
    box_format: str = "unit",
    width: float | None = None,
    height: float | None = None,
    **detail: Any,
) -> Verdict:
    """A verifier's verdict from the SC / PQ answer texts: ``{feature: O / 10}`` with the sub-scores
    and the flaws (boxes normalised to [0, 1]) in ``detail``; for an answer that is not the
    requested JSON, no scores and ``detail["failure"] = "malformed"`` (the call was still paid
    for: ``seconds`` and ``flops`` are kept)."""
    raw = "\n---\n".join(texts)
    try:
        sc, pq = parse_pair(texts)
    except MalformedAnswer as exc:
        return Verdict(
            {}, seconds, flops, {"failure": "malformed", "message": str(exc), "raw": raw, **detail}
        )
    score, sc_v, pq_v = overall(sc, pq)
    flaws, _ = answer_flaws(sc, box_format, width, height)
    found = [{"kind": f.kind, "box": list(f.box)} for f in flaws]
    return Verdict(
        {feature: score}, seconds, flops, {"sc": sc_v, "pq": pq_v, "flaws": found, "raw": raw, **detail}
    )
