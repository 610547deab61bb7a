"""Ground-truth judge and cheap online scores of the synthetic edit world (TESTBED).

``judge_attempt`` compares an attempt's scene with the exact target scene (recomputed from the
source scene and the instruction) and lists flaws with kinds from ``ade_runtime.feedback`` and
boxes. The score multiplies one penalty per flaw; an attempt passes when ``score >= PASS_THRESHOLD``
(0.7: one small artefact still passes, any missed or wrong edit does not).

``online_scores`` imitates what a runtime can compute from pixels alone (CLIP-T/CLIP-I in the
MagicBrush sense): ``clip_i`` is a pixel similarity to the source mapped to CLIP-I's usual range;
``clip_t`` mixes evidence that the instruction's named values (colours, shapes) appear with how
much changed, plus content-seeded noise and a per-category offset, so it is informative but noisy
and miscalibrated. Neither score sees the target scene.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from ade_runtime.errors import InputError
from ade_runtime.testbed.imageio import CHUNK_KEY, read_scenes
from ade_runtime.testbed.instructions import Edit, parse
from ade_runtime.testbed.scene import COLORS, Scene
from ade_runtime.testbed.world import apply_edits, target_oids
from ade_runtime.traces.records import Flaw, Judge

PASS_THRESHOLD = 0.7
_PENALTY = {
    "wrong_target": 0.5,
    "wrong_color": 0.45,
    "wrong_attribute": 0.45,
    "partial_edit": 0.35,
    "leakage": 0.35,
    "no_change": 0.6,
    "missing_object": 0.45,
    "extra_object": 0.45,
}
_POS_TOL = 0.08
_WHOLE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Defect:
    """One difference from the target: a flaw plus the key of what must change to fix it."""

    kind: str
    box: tuple[float, float, float, float]
    key: tuple  # ("obj", oid) | ("background",) | ("style",) | ("artifact", i)


def _same(a, b) -> bool:
    return (
        a.appearance() == b.appearance()
        and a.ghost is None
        and a.alpha == b.alpha
        and abs(a.x - b.x) <= _POS_TOL
        and abs(a.y - b.y) <= _POS_TOL
    )


def _box(o) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = o.box()
    return (x0, y0, max(x1, x0 + 1e-3), max(y1, y0 + 1e-3))


def diff(current: Scene, target: Scene, source: Scene, edits: tuple[Edit, ...]) -> list[Defect]:
    """Every way ``current`` differs from ``target``, as flaws with boxes."""
    targets = {oid for oid in target_oids(edits, source) if oid is not None}
    targets |= {o.oid for o in target.objects if o.oid not in source.by_oid()}  # added objects
    cur, tgt, src = current.by_oid(), target.by_oid(), source.by_oid()
    out: list[Defect] = []
    untouched_targets, changed_others = [], False
    for oid in sorted(set(cur) | set(tgt)):
        c, t = cur.get(oid), tgt.get(oid)
        if t is not None and c is not None and _same(c, t):
            continue
        if t is None:  # should be gone
            if c.alpha < 1:
                out.append(Defect("partial_edit", _box(c), ("obj", oid)))
                continue
            if oid in targets and oid in src and _same(c, src[oid]):
                untouched_targets.append(oid)
            out.append(Defect("extra_object", _box(c), ("obj", oid)))
        elif c is None:
            kind = "missing_object" if oid in targets else "leakage"
            changed_others |= oid not in targets
            out.append(Defect(kind, _box(t), ("obj", oid)))
        elif c.ghost is not None or c.alpha < 1:
            out.append(Defect("partial_edit", _box(t), ("obj", oid)))
        elif oid in targets:
            if oid in src and _same(c, src[oid]):
                untouched_targets.append(oid)
                out.append(Defect("no_change", _box(t), ("obj", oid)))
            elif c.color != t.color:
                out.append(Defect("wrong_color", _box(t), ("obj", oid)))
            else:
                out.append(Defect("wrong_attribute", _box(t), ("obj", oid)))
        else:
            changed_others = True
            out.append(Defect("leakage", _box(c), ("obj", oid)))
    if changed_others and untouched_targets:  # the edit landed on another object
        out = [
            Defect("wrong_target", d.box, d.key) if d.key[0] == "obj" and d.key[1] in untouched_targets else d
            for d in out
        ]
    for field, key in (("background", "background"), ("style", "style")):
        cv, tv, sv = getattr(current, field), getattr(target, field), getattr(source, field)
        partial = current.bg_ghost is not None if field == "background" else current.style_strength < 1
        if cv == tv and not partial:
            continue
        if partial:
            kind = "partial_edit"
        elif tv == sv:
            kind = "leakage"
        else:
            kind = "no_change" if cv == sv else "wrong_attribute"
        out.append(Defect(kind, _WHOLE, (key,)))
    for i, (cx, cy, r) in enumerate(current.artifacts):
        box = (max(0.0, cx - r), max(0.0, cy - r), min(1.0, cx + r), min(1.0, cy + r))
        out.append(Defect("artifact", box, ("artifact", i)))
    return out


def score_defects(defects: list[Defect]) -> float:
    s = 1.0
    for d in defects:
        if d.kind == "artifact":
            s *= 1 - (0.1 + 1.5 * (d.box[2] - d.box[0]) / 2)
        else:
            s *= 1 - _PENALTY.get(d.kind, 0.45)
    return float(max(0.0, min(1.0, s)))


def judge_scenes(current: Scene, source: Scene, instruction: str) -> Judge:
    edits = parse(instruction)
    target = apply_edits(source, edits)
    defects = diff(current, target, source, edits)
    score = score_defects(defects)
    return Judge(
        score=score, passed=score >= PASS_THRESHOLD, flaws=tuple(Flaw(d.kind, d.box) for d in defects)
    )


def judge_attempt(source_img: Image.Image, output_img: Image.Image, instruction: str) -> Judge:
    """Ground-truth judge of one attempt (exact target scene), from the two testbed images."""
    src_scene, _ = read_scenes(source_img, "source image")
    current, _ = read_scenes(output_img, "output image")
    return judge_scenes(current, src_scene, instruction)


# ---- online scores ---------------------------------------------------------------------------

_CAT_OFFSET = {
    "color": 0.015,
    "background": 0.02,
    "style": 0.025,
    "remove": -0.02,
    "action": -0.015,
    "compose": -0.01,
}
_PALETTE = np.array(list(COLORS.values()), np.float32)


def _small(img: Image.Image) -> np.ndarray:
    img = img.convert("RGB") if img.mode != "RGB" else img
    return np.asarray(img.resize((24, 24), Image.BOX), dtype=np.float32)


def _colour_share(a: np.ndarray, name: str) -> float:
    d = ((a[..., None, :] - _PALETTE) ** 2).sum(-1)
    idx = list(COLORS).index(name)
    return float((d.argmin(-1) == idx).mean())


@lru_cache(maxsize=4096)
def _parse_or_empty(instruction: str) -> tuple[Edit, ...]:
    try:
        return parse(instruction)
    except ValueError:
        return ()


SEMANTIC_WEIGHT = 0.05


def _perceived_adherence(output_img: Image.Image, instruction: str) -> float | None:
    """How well the output follows the instruction, as the scene in the image shows it (None for a
    plain image, e.g. a blurred preview, which carries no scene)."""
    try:
        current, src_scene = read_scenes(output_img, "output image")
        return judge_scenes(current, src_scene, instruction).score
    except (InputError, ValueError):
        return None


def online_scores(
    source_img: Image.Image,
    output_img: Image.Image,
    instruction: str,
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
    perceived: float | None = None,
) -> dict[str, float]:
    """Cheap scores: ``clip_i`` (pixel similarity to source) and ``clip_t`` (noisy adherence).

    ``clip_t`` is NOT pixels-only: besides pixel cues it holds ``semantic_weight`` x a view of the
    judge's own score of the output (the stand-in for what a pretrained text-image scorer knows);
    ``semantic_weight=0`` gives the pixels-only variant (docs/testbed.md gives both AUROCs).
    ``perceived``: the judge's score of the output when the caller has it (the generator), else read
    from the image's scene."""
    s, o = _small(source_img), _small(output_img)
    change = float(np.abs(s - o).mean() / 255.0)
    clip_i = 0.98 - 0.9 * min(1.0, 3.0 * change) ** 0.7 * 0.35
    edits = _parse_or_empty(instruction)
    evidence = []
    for e in edits:
        v = e.value
        named = (
            v
            if e.op == "color"
            else (v[1] if e.op == "add" and v[1] else (v[0] if e.op == "replace" else None))
        )
        if named is not None:
            evidence.append(np.tanh(60 * (_colour_share(o, named) - _colour_share(s, named))))
        elif e.op in ("remove", "extract", "background", "style"):
            evidence.append(np.tanh(12 * change) - 0.3)
        else:
            evidence.append(np.tanh(25 * change) - 0.4)
    ev = float(np.mean(evidence)) if evidence else 0.0
    sample = str(output_img.info.get(CHUNK_KEY, "")).encode()  # the attempt's own sample (imageio.grain)
    seed = int.from_bytes(
        hashlib.blake2b(o.tobytes() + instruction.encode() + sample, digest_size=8).digest(), "little"
    )
    noise = np.random.default_rng(seed).normal(0.0, 0.018)
    cat = "compose" if len(edits) > 1 else (edits[0].op if edits else "")
    clip_t = 0.24 + 0.035 * ev + 0.02 * np.tanh(20 * change) + _CAT_OFFSET.get(cat, 0.0) + noise
    sem = perceived if perceived is not None else _perceived_adherence(output_img, instruction)
    if sem is not None:
        # A learned text-image scorer partly perceives whether the asked edit happened (what makes
        # CLIP-T useful for Best-of-N at all); weak next to the pixel cues and the noise above.
        clip_t += semantic_weight * (sem - 0.6)
    return {"clip_t": float(clip_t), "clip_i": float(clip_i)}
