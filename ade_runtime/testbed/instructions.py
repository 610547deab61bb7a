"""Edit instructions of the synthetic edit world (TESTBED): structure, phrasing and parser.

Categories follow ImgEdit / GEdit-Bench (add, remove, replace, color, size, material,
background, style, action, extract, compose, text). An instruction is a tuple of ``Edit``s;
``phrase`` writes it in natural language with paraphrase templates and ``parse`` reads it back
(a small regular grammar written together with the templates, so parse(phrase(x)) == x).
Object references (``Ref``) name a shape and optionally size, colour, material and a spatial
relation ("the leftmost star", "the small blue one on the left"); ``resolve`` finds the object.
An ambiguous reference (several matches, no relation) resolves to the largest match, the
ground-truth convention the simulated backbone does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ade_runtime.errors import InputError
from ade_runtime.testbed.scene import (
    BACKGROUNDS,
    COLORS,
    LETTERS,
    MATERIALS,
    SHAPES,
    SIZES,
    STYLES,
    Obj,
    Scene,
)

CATEGORIES = (
    "add",
    "remove",
    "replace",
    "color",
    "size",
    "material",
    "background",
    "style",
    "action",
    "extract",
    "compose",
    "text",
)
RELATIONS = ("left", "right", "top", "bottom")
# Grid-cell names shared with ade_runtime.feedback; the cell centre is where add/move put objects.
CELLS = {
    "in the top-left corner": (1 / 6, 1 / 6),
    "at the top": (0.5, 1 / 6),
    "in the top-right corner": (5 / 6, 1 / 6),
    "on the left": (1 / 6, 0.5),
    "in the centre": (0.5, 0.5),
    "on the right": (5 / 6, 0.5),
    "in the bottom-left corner": (1 / 6, 5 / 6),
    "at the bottom": (0.5, 5 / 6),
    "in the bottom-right corner": (5 / 6, 5 / 6),
}
_DEST = {c: "to the " + c.split(" the ", 1)[1] for c in CELLS}  # "on the left" -> "to the left"
_BG_TEXT = {
    "grey": "plain grey",
    "beige": "beige",
    "white": "white",
    "navy": "navy blue",
    "sunset": "a sunset gradient",
    "sky": "a blue sky",
    "grass": "grass",
    "brick": "a brick wall",
    "wood": "wood",
    "sand": "sand",
}
_STYLE_TEXT = {
    "photo": "a photo",
    "pixel art": "pixel art",
    "pencil sketch": "a pencil sketch",
    "watercolor": "a watercolor painting",
    "night": "a night scene",
}
_SIZE_TEXT = {"small": "small", "medium": "medium-sized", "large": "large"}
_REL_ADJ = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "lowest"}
_REL_LOC = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


@dataclass(frozen=True)
class Ref:
    """A description of one object; unset fields are not mentioned."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    material: str | None = None
    relation: str | None = None

    def matches(self, o: Obj) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.shape, o.shape),
                (self.color, o.color),
                (self.size, o.size),
                (self.material, o.material),
            )
        )


@dataclass(frozen=True)
class Edit:
    """One edit: ``op`` is a category (``action`` = move), ``value`` its argument (see ``phrase``)."""

    op: str
    ref: Ref | None = None
    value: tuple | str | None = None


def candidates(ref: Ref, scene: Scene) -> list[Obj]:
    return [o for o in scene.objects if o.alpha > 0 and ref.matches(o)]


def resolve(ref: Ref, scene: Scene) -> Obj | None:
    """The object a reference means: the extreme match for a relation, else the largest match."""
    objs = candidates(ref, scene)
    if not objs:
        return None
    if ref.relation == "left":
        return min(objs, key=lambda o: o.x)
    if ref.relation == "right":
        return max(objs, key=lambda o: o.x)
    if ref.relation == "top":
        return min(objs, key=lambda o: o.y)
    if ref.relation == "bottom":
        return max(objs, key=lambda o: o.y)
    return max(objs, key=lambda o: (o.radius, -scene.objects.index(o)))


def is_ambiguous(ref: Ref, scene: Scene) -> bool:
    return ref.relation is None and len(candidates(ref, scene)) > 1


# ---- phrasing ---------------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "turn {ref} {color}",
        "make {ref} {color}",
        "paint {ref} {color}",
        "change the colour of {ref} to {color}",
    ),
    "size": ("make {ref} {size}", "resize {ref} to be {size}", "scale {ref} so it is {size}"),
    "material": (
        "make {ref} {material}",
        "give {ref} a {material} texture",
        "change {ref} to a {material} finish",
    ),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}", "erase {ref}"),
    "add": ("add {new} {cell}", "put {new} {cell}", "place {new} {cell}", "draw {new} {cell}"),
    "replace": ("replace {ref} with {new}", "swap {ref} for {new}", "turn {ref} into {new}"),
    "background": (
        "change the background to {bg}",
        "replace the background with {bg}",
        "make the background {bg}",
        "set the scene against {bg}",
    ),
    "style": (
        "make it look like {style}",
        "render the image as {style}",
        "convert the picture to {style}",
        "restyle it as {style}",
    ),
    "action": ("move {ref} {dest}", "shift {ref} {dest}", "slide {ref} {dest}", "drag {ref} {dest}"),
    "extract": (
        "extract {ref} onto a white background",
        "isolate {ref} on white",
        "keep only {ref} on a white backdrop",
    ),
    "text": (
        "write the letter {letter} on {ref}",
        "label {ref} with the letter {letter}",
        "add the label '{letter}' to {ref}",
    ),
}
_SEPARATORS = (", then ", " and then ", "; ", ", and also ")


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_REF_RE = (
    rf"the (?:(?P<rel_adj>{_alt(_REL_ADJ.values())}) )?(?:(?P<rsize>{_alt(SIZES)}) )?(?:(?P<rcolor>{_alt(COLORS)}) )?"
    rf"(?:(?P<rmat>{_alt(MATERIALS)}) )?(?P<noun>{_alt(SHAPES + ('object', 'one'))})"
    rf"(?: (?P<rel_loc>{_alt(_REL_LOC.values())}))?"
)
_NEW_RE = rf"an? (?:(?P<nsize>{_alt(_SIZE_TEXT.values())}) )?(?:(?P<ncolor>{_alt(COLORS)}) )?(?P<nshape>{_alt(SHAPES)})"
_SLOTS = {
    "{ref}": _REF_RE,
    "{new}": _NEW_RE,
    "{color}": rf"(?P<color>{_alt(COLORS)})",
    "{size}": rf"(?P<size>{_alt(_SIZE_TEXT.values())})",
    "{material}": rf"(?P<material>{_alt(MATERIALS)})",
    "{cell}": rf"(?P<cell>{_alt(CELLS)})",
    "{dest}": rf"(?P<dest>{_alt(_DEST.values())})",
    "{bg}": rf"(?P<bg>{_alt(_BG_TEXT.values())})",
    "{style}": rf"(?P<style>{_alt(_STYLE_TEXT.values())})",
    "{letter}": rf"(?P<letter>{_alt(w.lower() for w in LETTERS)})",
}


def _compile(t: str) -> re.Pattern[str]:
    rx = re.escape(t)
    for slot, sub in _SLOTS.items():
        rx = rx.replace(re.escape(slot), sub)
    return re.compile(rx)


_PARSERS = [(op, _compile(t)) for op, ts in _TEMPLATES.items() for t in ts]


def phrase_ref(ref: Ref, rng: np.random.Generator) -> str:
    words = ["the"]
    loc = ref.relation is not None and rng.random() < 0.5
    if ref.relation is not None and not loc:
        words.append(_REL_ADJ[ref.relation])
    words += [w for w in (ref.size, ref.color, ref.material) if w is not None]
    if ref.shape is not None:
        words.append(ref.shape)
    else:
        words.append("one" if len(words) > 1 and rng.random() < 0.5 else "object")
    if loc:
        words.append(_REL_LOC[ref.relation])
    return " ".join(words)


def _new_text(size: str | None, color: str | None, shape: str) -> str:
    words = [w for w in (None if size is None else _SIZE_TEXT[size], color, shape) if w is not None]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def phrase_edit(e: Edit, rng: np.random.Generator) -> str:
    t = _TEMPLATES[e.op][int(rng.integers(len(_TEMPLATES[e.op])))]
    ref = "" if e.ref is None else phrase_ref(e.ref, rng)
    v = e.value
    fill = {"{ref}": ref}
    if e.op == "add":
        fill.update({"{new}": _new_text(v[0], v[1], v[2]), "{cell}": v[3]})
    elif e.op == "replace":
        fill["{new}"] = _new_text(None, v[0], v[1])
    elif e.op in ("color", "material"):
        fill["{" + e.op + "}"] = v
    elif e.op == "size":
        fill["{size}"] = _SIZE_TEXT[v]
    elif e.op == "background":
        fill["{bg}"] = _BG_TEXT[v]
    elif e.op == "style":
        fill["{style}"] = _STYLE_TEXT[v]
    elif e.op == "action":
        fill["{dest}"] = _DEST[v]
    elif e.op == "text":
        fill["{letter}"] = v
    for k, s in fill.items():
        t = t.replace(k, s)
    return t


def phrase(edits: tuple[Edit, ...], rng: np.random.Generator) -> str:
    """Natural-language instruction for a tuple of edits (compose: several joined clauses)."""
    clauses = [phrase_edit(e, rng) for e in edits]
    text = clauses[0]
    for c in clauses[1:]:
        text += _SEPARATORS[int(rng.integers(len(_SEPARATORS)))] + c
    return text[0].upper() + text[1:] + "."


def _ref_from(m: re.Match[str]) -> Ref:
    g = m.groupdict()
    rel = None
    if g.get("rel_adj"):
        rel = {v: k for k, v in _REL_ADJ.items()}[g["rel_adj"]]
    elif g.get("rel_loc"):
        rel = {v: k for k, v in _REL_LOC.items()}[g["rel_loc"]]
    noun = g["noun"]
    return Ref(
        shape=None if noun in ("object", "one") else noun,
        color=g.get("rcolor"),
        size=g.get("rsize"),
        material=g.get("rmat"),
        relation=rel,
    )


def _edit_from(op: str, m: re.Match[str]) -> Edit:
    g = m.groupdict()
    ref = _ref_from(m) if "noun" in g else None
    size_of = {v: k for k, v in _SIZE_TEXT.items()}
    if op == "add":
        size = None if g["nsize"] is None else size_of[g["nsize"]]
        return Edit(op, None, (size, g["ncolor"], g["nshape"], g["cell"]))
    if op == "replace":
        return Edit(op, ref, (g["ncolor"], g["nshape"]))
    value = {
        "color": lambda: g["color"],
        "material": lambda: g["material"],
        "size": lambda: size_of[g["size"]],
        "background": lambda: {v: k for k, v in _BG_TEXT.items()}[g["bg"]],
        "style": lambda: {v: k for k, v in _STYLE_TEXT.items()}[g["style"]],
        "action": lambda: {v: k for k, v in _DEST.items()}[g["dest"]],
        "text": lambda: g["letter"].upper(),
    }.get(op, lambda: None)()
    return Edit(op, ref, value)


def _parse_grammar(body: str) -> tuple[tuple[Edit, ...], str | None]:
    """The edits of a text in the grammar's words, or the first clause it does not understand."""
    edits = []
    for clause in re.split("|".join(re.escape(s) for s in _SEPARATORS), body):
        for op, rx in _PARSERS:
            m = rx.fullmatch(clause.strip())
            if m is not None:
                edits.append(_edit_from(op, m))
                break
        else:
            return (), clause
    return tuple(edits), None


def parse(text: str) -> tuple[Edit, ...]:
    """Parse an instruction into its edits; InputError otherwise.

    Reads the grammar ``phrase`` writes and, through ``phrasing.normalize``, every phrasing family
    (polite, casual, wishes; synonyms and typos), as a real backbone understands paraphrases."""
    from ade_runtime.testbed.phrasing import normalize

    body = text.strip().rstrip(".!").strip().lower()
    if not body:
        raise InputError("testbed instruction is empty")
    edits, bad = _parse_grammar(body)
    if bad is None:
        return edits
    edits, _ = _parse_grammar(normalize(text))
    if edits:
        return edits
    raise InputError(
        f"the testbed backbone does not understand {bad!r}: it reads only the synthetic world's "
        "grammar and its phrasing families (e.g. 'Turn the red star blue.', 'Can you make the star "
        "blue?'); use `ade-testbed request` to get an instruction"
    )


def category_of(edits: tuple[Edit, ...]) -> str:
    return "compose" if len(edits) > 1 else edits[0].op


__all__ = ["BACKGROUNDS", "STYLES", "CATEGORIES", "CELLS", "Edit", "Ref", "parse", "phrase", "resolve"]
