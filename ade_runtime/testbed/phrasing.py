"""How users write edit instructions: phrasing families of the synthetic edit world (TESTBED).

``instructions.phrase`` writes the testbed's small grammar ("Turn the red star blue, then remove the
ring."). Real requests are written otherwise: "Can you make the star blue and remove the ring?",
"pls mak the little star blu then take out the ring". ``rephrase`` writes the same edits in one of
these families, each a mix of wrappers (polite, imperative, wishes), joiners for compound edits
("and", "then", commas, ...), synonyms and typos:

- ``grammar``: the grammar itself (``instructions.phrase``);
- ``polite``: questions and requests ("Could you ..., please?"), training-vocabulary synonyms;
- ``casual``: lower case, abbreviations, more synonyms and typos in longer words;
- ``wish`` (``HELDOUT_FAMILY``): first-person wishes ("I'd like you to ...") with joiners and
  synonyms no other family uses. The sample data never uses it, so a bench can measure CARD on
  phrasing it never saw (``ade_train.bench.card_phrasing``).

``normalize`` maps any family back to the grammar (wrappers stripped, synonyms mapped, typos fixed
against the world's vocabulary), so the simulated backbone understands every family and its
outcomes depend on the edits alone, never on their wording. ``rephrase`` checks that the text it
writes parses back to its edits and drops typos where it would not.
"""

from __future__ import annotations

import difflib
import re

import numpy as np

FAMILIES = ("grammar", "polite", "casual", "wish")
HELDOUT_FAMILY = "wish"
TRAINING_FAMILIES = ("grammar", "polite", "casual")

_WRAPPERS: dict[str, tuple[str, ...]] = {
    "polite": (
        "Can you {x}?",
        "Could you please {x}?",
        "Please {x}.",
        "{X}, please.",
        "Would you {x}?",
    ),
    "casual": ("{x}", "pls {x}", "{x} thx", "quick one: {x}", "ok so {x}"),
    "wish": (
        "I'd like you to {x}.",
        "I want you to {x}.",
        "It would be great if you could {x}.",
        "Help me {x}.",
        "My wish: {x}.",
    ),
}
_JOINERS: dict[str, tuple[str, ...]] = {
    "polite": (" and ", ", then ", " and then "),
    "casual": (", ", " then ", " and ", " & "),
    "wish": (" as well as ", " and afterwards ", " plus ", ", after that "),
}
# canonical word -> (synonyms the training families use, synonyms only the held-out family uses);
# no synonym is a word of the grammar, so normalize() maps each back unambiguously
_SYNONYMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "remove": (("take out",), ("eliminate",)),
    "delete": (("drop",), ("wipe out",)),
    "erase": (("rub out",), ("scrub",)),
    "add": (("insert",), ("include",)),
    "put": (("stick",), ("position",)),
    "place": (("set down",), ("situate",)),
    "move": (("push",), ("relocate",)),
    "shift": (("nudge",), ("transfer",)),
    "replace": (("exchange",), ("substitute",)),
    "swap": (("switch",), ("trade",)),
    "paint": (("colour in",), ("tint",)),
    "colour": (("color",), ("hue",)),
    "background": (("bg",), ("setting",)),
    "picture": (("pic",), ("artwork",)),
    "image": (("img",), ("frame",)),
    "object": (("thing",), ("item",)),
    "small": (("little",), ("tiny",)),
    "large": (("big",), ("huge",)),
    "leftmost": (("left-most",), ("furthest left",)),
    "rightmost": (("right-most",), ("furthest right",)),
    "red": ((), ("crimson",)),
    "purple": ((), ("violet",)),
}
_SYN_RATE = {"grammar": 0.0, "polite": 0.3, "casual": 0.5, "wish": 0.6}
_TYPO_RATE = {"grammar": 0.0, "polite": 0.0, "casual": 0.12, "wish": 0.05}
_TO_CANON = {s: c for c, (tr, ho) in _SYNONYMS.items() for s in (*tr, *ho)}
_SYN_RE = re.compile(
    r"\b(" + "|".join(re.escape(s) for s in sorted(_TO_CANON, key=len, reverse=True)) + r")\b"
)
_WORD_RE = re.compile(r"[a-z][a-z'-]*")


def _wrapper_patterns() -> list[re.Pattern[str]]:
    out = []
    for ts in _WRAPPERS.values():
        for t in ts:
            t = t.lower().replace("{x}", "\x00").strip()
            if t == "\x00":
                continue
            head, tail = t.split("\x00")
            out.append(
                re.compile("^" + re.escape(head) + r"(?P<x>.+?)" + re.escape(tail.rstrip(".?!")) + "$")
            )
    return out


_UNWRAP = _wrapper_patterns()


def joiners() -> tuple[str, ...]:
    """Every joiner of compound edits the families use (the grammar's separators are the parser's)."""
    return tuple(sorted({j for js in _JOINERS.values() for j in js}, key=len, reverse=True))


def _synonym(word: str, family: str, rng: np.random.Generator) -> str:
    train, heldout = _SYNONYMS[word]
    pool = heldout if family == HELDOUT_FAMILY else train
    if not pool or rng.random() >= _SYN_RATE[family]:
        return word
    return pool[int(rng.integers(len(pool)))]


def _typo(word: str, rng: np.random.Generator) -> str:
    """One slip in a longer word: two letters swapped, one dropped or one doubled (not the first)."""
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _vary(clause: str, family: str, rng: np.random.Generator, typos: bool) -> str:
    words = clause.split(" ")
    out = []
    for w in words:
        if w in _SYNONYMS:
            w = _synonym(w, family, rng)
        elif typos and len(w) >= 5 and w.isalpha() and rng.random() < _TYPO_RATE[family]:
            w = _typo(w, rng)
        out.append(w)
    return " ".join(out)


def rephrase(edits, family: str, rng: np.random.Generator) -> str:
    """The edits written in ``family`` (one of ``FAMILIES``); parses back to ``edits``."""
    from ade_runtime.errors import InputError
    from ade_runtime.testbed.instructions import parse, phrase, phrase_edit

    if family not in FAMILIES:
        raise InputError(f"unknown phrasing family {family!r}; choose from {', '.join(FAMILIES)}")
    if family == "grammar":
        return phrase(edits, rng)
    canon = [phrase_edit(e, rng) for e in edits]
    wrapper = _WRAPPERS[family][int(rng.integers(len(_WRAPPERS[family])))]
    joins = [_JOINERS[family][int(rng.integers(len(_JOINERS[family])))] for _ in canon[1:]]
    for typos in (True, True, False):  # a typo that does not read back is dropped
        clauses = [_vary(c, family, rng, typos) for c in canon]
        body = clauses[0] + "".join(j + c for j, c in zip(joins, clauses[1:], strict=True))
        text = wrapper.replace("{X}", body[0].upper() + body[1:]).replace("{x}", body)
        if family != "casual":
            text = text[0].upper() + text[1:]
        try:
            if parse(text) == tuple(edits):
                return text
        except InputError:
            pass
    raise AssertionError(f"rephrase: {family} text for {edits!r} does not parse back")  # pragma: no cover


def _vocabulary() -> list[str]:
    from ade_runtime.testbed import instructions as ins

    words: set[str] = set()
    texts = [t for ts in ins._TEMPLATES.values() for t in ts]
    texts += list(ins._SEPARATORS) + list(ins.CELLS) + list(ins._DEST.values()) + list(ins._BG_TEXT.values())
    texts += list(ins._STYLE_TEXT.values()) + list(ins._SIZE_TEXT.values()) + list(ins._REL_ADJ.values())
    texts += list(ins._REL_LOC.values()) + ["the one object a an"]
    from ade_runtime.testbed.scene import COLORS, MATERIALS, SHAPES, SIZES

    texts += [*SHAPES, *COLORS, *MATERIALS, *SIZES]
    for t in texts:
        words.update(_WORD_RE.findall(t.lower()))
    return sorted(words)


_VOCAB: list[str] = []


def _fix_typo(word: str) -> str:
    if not _VOCAB:
        _VOCAB.extend(_vocabulary())
    if len(word) < 5 or word in _VOCAB:
        return word
    match = difflib.get_close_matches(word, _VOCAB, n=1, cutoff=0.75)
    return match[0] if match else word


def normalize(text: str) -> str:
    """Any family's text in the grammar's words: unwrapped, joiners as ', then ', synonyms mapped back,
    typos fixed against the world's vocabulary (what a real backbone's language understanding does)."""
    from ade_runtime.testbed.instructions import _SEPARATORS

    body = text.strip().lower().rstrip(".!?").strip()
    for rx in _UNWRAP:
        m = rx.fullmatch(body)
        if m is not None:
            body = m.group("x").strip().rstrip(".!?,").strip()
            break
    for j in sorted({*joiners(), *_SEPARATORS}, key=len, reverse=True):
        body = body.replace(j, "\x00")
    clauses = []
    for c in body.split("\x00"):
        c = _SYN_RE.sub(lambda m: _TO_CANON[m.group(1)], c.strip())
        c = _WORD_RE.sub(lambda m: _fix_typo(m.group(0)), c)
        clauses.append(_SYN_RE.sub(lambda m: _TO_CANON[m.group(1)], c))
    return ", then ".join(c for c in clauses if c)
