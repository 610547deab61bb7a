"""Refinement feedback: turn flaws (kind + box) into a prompt sentence and parse it back.

The critique head and the testbed's trace generator both write refinement prompts with
``feedback_prompt``; the synthetic backbone reads them back with ``parse_feedback``. The
phrasing follows the "flaw + region + fix" refinement prompts of self-refining editing
loops (e.g. the verbal feedback of Idea2Img / EditScore-guided refinement): one sentence
per flaw naming what is wrong and where, optionally followed by how to fix it.

Regions are named on a 3 x 3 grid ("in the top-left corner", "on the right", "in the
centre"), by halves ("in the left half") or as "across the whole image"; parsing returns
the box of the named region, so a parsed box approximates the original one.

Flaw kinds (``FLAW_KINDS``):

- ``wrong_target``   the edit was applied to another object; the box marks the intended one
- ``wrong_color``    the right object has the wrong colour
- ``wrong_attribute`` another attribute (shape, size, pattern, position, background, style, text) is wrong
- ``partial_edit``   the edit was applied only partly
- ``artifact``       a local distortion
- ``leakage``        something outside the target changed
- ``no_change``      nothing happened where the edit should be
- ``missing_object`` an object that should be there is not
- ``extra_object``   an object that should be gone is still (or newly) there

Any other kind string (other domains) gets a generic sentence that round-trips too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ade_runtime.errors import InputError
from ade_runtime.traces.records import Flaw

FLAW_KINDS = (
    "wrong_target",
    "wrong_color",
    "wrong_attribute",
    "partial_edit",
    "artifact",
    "leakage",
    "no_change",
    "missing_object",
    "extra_object",
)

# The sentence opener for each known kind; "{region}" is replaced by the region phrase.
_KIND_SENTENCES = {
    "wrong_target": "The edit went to the wrong object; the intended object is {region}",
    "wrong_color": "The object {region} still has the wrong colour",
    "wrong_attribute": "The object {region} does not look as asked",
    "partial_edit": "The edit {region} is only half done",
    "artifact": "There is a visible distortion {region}",
    "leakage": "Something {region} changed that should have stayed the same",
    "no_change": "Nothing changed {region}",
    "missing_object": "An object is missing {region}",
    "extra_object": "There is an object {region} that should not be there",
}
_GENERIC_SENTENCE = "There is a problem ({kind}) {region}"

_T, _M, _B = (0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)
# Region phrase -> (x0, y0, x1, y1); the order is the parser's preference (longest first).
REGION_BOXES: dict[str, tuple[float, float, float, float]] = {
    "across the whole image": (0.0, 0.0, 1.0, 1.0),
    "in the top-left corner": (_T[0], _T[0], _T[1], _T[1]),
    "in the top-right corner": (_B[0], _T[0], _B[1], _T[1]),
    "in the bottom-left corner": (_T[0], _B[0], _T[1], _B[1]),
    "in the bottom-right corner": (_B[0], _B[0], _B[1], _B[1]),
    "in the left half": (0.0, 0.0, 0.5, 1.0),
    "in the right half": (0.5, 0.0, 1.0, 1.0),
    "in the top half": (0.0, 0.0, 1.0, 0.5),
    "in the bottom half": (0.0, 0.5, 1.0, 1.0),
    "at the top": (_M[0], _T[0], _M[1], _T[1]),
    "at the bottom": (_M[0], _B[0], _M[1], _B[1]),
    "on the left": (_T[0], _M[0], _T[1], _M[1]),
    "on the right": (_B[0], _M[0], _B[1], _M[1]),
    "in the centre": (_M[0], _M[0], _M[1], _M[1]),
}
_CELL_NAMES = (
    ("in the top-left corner", "at the top", "in the top-right corner"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom-left corner", "at the bottom", "in the bottom-right corner"),
)
_REGION_RE = "|".join(re.escape(r) for r in REGION_BOXES)


def _check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise InputError(f"flaw box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise InputError(f"flaw box {box!r} must be normalised to [0, 1] with x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def describe_region(box: Sequence[float]) -> str:
    """Name the region of a normalised box: a grid cell, a half, or the whole image."""
    x0, y0, x1, y1 = _check_box(box)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if w > 0.7 and h > 0.7:
        return "across the whole image"
    # A box too wide or tall for one cell is named by the half that holds its centre.
    if h > 0.55 and w <= 0.55:
        return "in the left half" if cx < 0.5 else "in the right half"
    if w > 0.55:
        return "in the top half" if cy < 0.5 else "in the bottom half"
    col = min(2, int(cx * 3))
    row = min(2, int(cy * 3))
    return _CELL_NAMES[row][col]


def _sentence(flaw: Flaw, hint: str | None) -> str:
    region = describe_region(flaw.box)
    template = _KIND_SENTENCES.get(flaw.kind)
    if template is None:
        if not re.fullmatch(r"[a-z0-9_]+", flaw.kind):
            raise InputError(f"flaw kind {flaw.kind!r} must be lower-case letters, digits and '_'")
        text = _GENERIC_SENTENCE.format(kind=flaw.kind.replace("_", " "), region=region)
    else:
        text = template.format(region=region)
    if hint:
        text += "; " + hint.strip().rstrip(".")
    return text + "."


def feedback_prompt(instruction: str, flaws: Sequence[Flaw], hints: dict[str, str] | None = None) -> str:
    """The refinement prompt: the instruction followed by one sentence per flaw.

    ``hints`` maps a flaw kind to a fix phrase appended to that kind's sentences
    (e.g. ``{"wrong_color": "make it blue"}``). With no flaws the instruction is returned as is.
    """
    base = instruction.strip()
    if not base:
        raise InputError("feedback_prompt: the instruction is empty; pass the request's instruction")
    if not flaws:
        return base
    if base[-1] not in ".!?":
        base += "."
    hints = hints or {}
    return " ".join([base] + [_sentence(f, hints.get(f.kind)) for f in flaws])


_SENTENCE_RES: list[tuple[str | None, re.Pattern[str]]] = [
    (kind, re.compile(re.escape(t).replace(re.escape("{region}"), f"(?P<region>{_REGION_RE})")))
    for kind, t in _KIND_SENTENCES.items()
] + [
    (
        None,
        re.compile(
            re.escape(_GENERIC_SENTENCE)
            .replace(re.escape("{kind}"), r"(?P<kind>[a-z0-9 ]+)")
            .replace(re.escape("{region}"), f"(?P<region>{_REGION_RE})")
        ),
    )
]


def split_feedback(prompt: str) -> tuple[str, list[Flaw]]:
    """Split a refinement prompt into (instruction, flaws); text before the first flaw is the instruction."""
    found: list[tuple[int, int, Flaw]] = []
    for kind, rx in _SENTENCE_RES:
        for m in rx.finditer(prompt):
            k = kind if kind is not None else m.group("kind").replace(" ", "_")
            found.append((m.start(), m.end(), Flaw(kind=k, box=REGION_BOXES[m.group("region")])))
    found.sort(key=lambda t: t[0])
    flaws: list[Flaw] = []
    last_end = -1
    for start, end, flaw in found:
        if start >= last_end:  # a generic sentence never double-counts a known one
            flaws.append(flaw)
            last_end = end
    instruction = prompt[: found[0][0]].strip() if found else prompt.strip()
    return instruction, flaws


def parse_feedback(prompt: str) -> list[Flaw]:
    """The flaws a refinement prompt names, in order, with the boxes of the regions it names."""
    return split_feedback(prompt)[1]
