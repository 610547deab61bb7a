"""How a simulated attempt's outcome is realised on a testbed scene (a CPU TESTBED, not a model).

``SyntheticBackbone`` decides (from its skill model) whether each edit of an attempt succeeds;
this module turns the decisions into scenes and pixels: a failed edit in its failure mode
(``fail_edit``: wrong target, wrong value, partial, no change), a defect a refinement fixes
(``fix_defect``), an output confined to ``spec.mask`` (``confine``) and the blurred, noised
early-step preview the loop prunes on (``degrade_preview``). See docs/testbed.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
from PIL import Image

from ade_runtime.errors import InputError
from ade_runtime.testbed.instructions import Edit, candidates
from ade_runtime.testbed.judge import Defect
from ade_runtime.testbed.scene import (
    BACKGROUNDS,
    COLORS,
    LETTERS,
    MATERIALS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    render,
)
from ade_runtime.testbed.world import CELLS, apply_edit


def hash_u64(*parts: str) -> int:
    """A stable 64-bit seed from strings (blake2b, not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


_PREVIEW_CACHE: dict[str, Image.Image] = {}


def degrade_preview(pixels: np.ndarray, key: str) -> Image.Image:
    """An early-step preview: blurred, noised final output (what a one-step x0 estimate looks like).

    The noise is seeded by the output's content, so equal outputs have equal previews (and cache).
    """
    key = f"{pixels.shape[0]}:{key}"
    hit = _PREVIEW_CACHE.get(key)
    if hit is not None:
        return hit.copy()
    if len(_PREVIEW_CACHE) > 512:
        _PREVIEW_CACHE.clear()
    rng = np.random.default_rng(hash_u64(key, "preview"))
    n = pixels.shape[0]
    small = np.asarray(Image.fromarray(pixels).reduce(4), dtype=np.float32)
    noisy = np.clip(small + rng.normal(0, 18, small.shape), 0, 255).astype(np.uint8)
    out = Image.fromarray(noisy).resize((n, n), Image.BILINEAR)
    _PREVIEW_CACHE[key] = out
    return out.copy()


def _other(values, cur, rng):
    return str(rng.choice([v for v in values if v != cur]))


def fail_edit(
    out: Scene, e: Edit, oid: int | None, mode: str, rng: np.random.Generator, source: Scene
) -> None:
    """Realise a failed edit on ``out`` in the given mode."""
    objs = out.by_oid()
    o = objs.get(oid) if oid is not None else None
    if mode == "wrong_target" and e.ref is not None:
        pool = [c for c in candidates(e.ref, source) if c.oid != oid] or [
            c for c in source.objects if c.oid != oid
        ]
        if pool:
            other = pool[int(rng.integers(len(pool)))]
            if other.oid in objs:
                apply_edit(out, e, other.oid)
            return
        mode = "wrong_value"
    if mode == "no_change":
        return
    if mode == "wrong_value":
        v = e.value
        wrong = {
            "color": lambda: _other(COLORS, v, rng),
            "size": lambda: _other(SIZES, v, rng),
            "material": lambda: _other(MATERIALS, v, rng),
            "text": lambda: _other(LETTERS, v, rng),
            "replace": lambda: (v[0], _other(SHAPES, v[1], rng)),
            "background": lambda: _other(BACKGROUNDS, v, rng),
            "style": lambda: _other(STYLES, v, rng),
            "action": lambda: _other(CELLS, v, rng),
            "add": lambda: (v[0], _other(COLORS, v[1], rng), v[2], v[3]),
        }.get(e.op)
        if wrong is not None:
            apply_edit(out, Edit(e.op, e.ref, wrong()), oid)
            return
        if e.op == "extract":
            bg = out.background
            apply_edit(out, e, oid)
            out.background = bg
            return
        mode = "partial"  # remove has no wrong value: it half-removes
    # partial edit
    if e.op in ("color", "size", "material", "replace", "text") and o is not None:
        old = {"color": o.color, "size": o.size, "material": o.material, "shape": o.shape}
        apply_edit(out, e, oid)
        o.ghost = {k: v for k, v in old.items() if k != "size" or e.op == "size"}
    elif e.op == "remove" and o is not None:
        o.alpha = 0.5
    elif e.op == "add":
        apply_edit(out, e, oid)
        out.by_oid()[oid].alpha = 0.5
    elif e.op == "action" and o is not None:
        tx, ty = CELLS[e.value]
        o.x, o.y = round((o.x + tx) / 2, 3), round((o.y + ty) / 2, 3)
    elif e.op == "extract" and o is not None:
        others = [c for c in out.objects if c.oid != oid]
        apply_edit(out, e, oid)
        for c in others:
            c.alpha = 0.5
        out.objects[:0] = others
    elif e.op == "background":
        out.bg_ghost = out.background
        out.background = e.value
    elif e.op == "style":
        out.style, out.style_strength = e.value, 0.5


def fix_defect(out: Scene, target: Scene, d: Defect) -> None:
    """Make the part of ``out`` that ``d`` names equal to the target."""
    if d.key[0] == "obj":
        oid = d.key[1]
        t = target.by_oid().get(oid)
        idx = next((i for i, o in enumerate(out.objects) if o.oid == oid), None)
        if t is None:
            if idx is not None:
                out.objects.pop(idx)
        elif idx is None:
            out.objects.append(replace(t, ghost=None))
        else:
            out.objects[idx] = replace(t, ghost=None)
    elif d.key[0] == "background":
        out.background, out.bg_ghost = target.background, None
    elif d.key[0] == "style":
        out.style, out.style_strength = target.style, 1.0


def confine(current: Scene, out: Scene, pixels, mask, in_pixels):
    """``out`` and its ``pixels`` changed only where ``mask`` >= 0.5 allows; elsewhere ``current`` stays."""
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != pixels.shape[:2]:
        raise InputError(f"mask shape {m.shape} must equal the image size {pixels.shape[:2]}")
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise InputError("mask values must be finite and in [0, 1] (1 = may change)")
    n = pixels.shape[0]
    inside = lambda x, y: m[min(n - 1, int(y * n)), min(n - 1, int(x * n))] >= 0.5  # noqa: E731
    cur = current.by_oid()
    kept = []
    for o in out.objects:
        c = cur.get(o.oid)
        if c is None:
            if inside(o.x, o.y):
                kept.append(o)
        elif inside(o.x, o.y) or inside(c.x, c.y):
            kept.append(o)
        else:
            kept.append(c.clone())
    kept += [c.clone() for oid, c in cur.items() if oid not in out.by_oid() and not inside(c.x, c.y)]
    out.objects = sorted(kept, key=lambda o: [x.oid for x in current.objects + out.objects].index(o.oid))
    if m.mean() < 0.9:
        out.background, out.style, out.bg_ghost, out.style_strength = (
            current.background,
            current.style,
            current.bg_ghost,
            current.style_strength,
        )
    out.artifacts = [a for a in out.artifacts if a in current.artifacts or inside(a[0], a[1])]
    base = in_pixels if in_pixels is not None else render(current, n)
    new = render(out, n).astype(np.float32)
    mixed = base.astype(np.float32) * (1 - m[..., None]) + new * m[..., None]
    return out, np.where(m[..., None] > 0, np.clip(np.rint(mixed), 0, 255), base).astype(np.uint8)
