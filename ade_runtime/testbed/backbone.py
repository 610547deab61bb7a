"""SyntheticBackbone: a simulated editing model of the synthetic edit world (a CPU TESTBED, not a model).

It implements ``ade_runtime.backbones.base.Backbone`` so ADE's loop, pruning, masks and reasoning
budgets run end to end on CPU. Given a testbed image (scene in its PNG chunk) and a prompt it
parses the instruction with the testbed grammar and simulates an attempt, deterministic in
``spec.seed``. Failure modes: wrong target, wrong attribute/value, partial edit, no change, plus
side effects (artefact blobs, leakage onto other objects). Failure rates depend on what CARD can
see (category, edit count, clutter, target size, ambiguous or relational references), on a
per-request latent difficulty (hashed from the content, so candidates share it), and on
``reasoning_tokens`` (a large gain for hard categories, almost none for appearance edits). Some
requests are "blocked": one edit is beyond the model and never succeeds (requests no grid solves).

A refinement round (input = previous output, prompt = instruction + feedback from
``ade_runtime.feedback``) fixes each remaining defect with probability ``p_fix_guided`` when the
feedback names a region containing it, ``p_fix_blind`` otherwise (blind retry or wrong region).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.errors import InputError
from ade_runtime.feedback import split_feedback
from ade_runtime.policy.budget import pruned_nfe
from ade_runtime.testbed.costs import BackboneCost, get_cost
from ade_runtime.testbed.imageio import CHUNK_KEY, make_image, parse_chunk, read_scenes
from ade_runtime.testbed.instructions import Edit, candidates, is_ambiguous, parse, resolve
from ade_runtime.testbed.judge import Defect, diff
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
from ade_runtime.testbed.world import CELLS, apply_edit, apply_edits, target_oids

# Success logit per edit category at reasoning_tokens=0 for a typical request (GEdit/ImgEdit ordering:
# appearance edits easiest; action, remove, extract and compose hardest).
BASE_LOGIT = {
    "color": 2.8,
    "background": 2.6,
    "style": 2.4,
    "material": 1.7,
    "size": 1.5,
    "text": 1.0,
    "add": 0.9,
    "replace": 1.1,
    "extract": 0.6,
    "remove": 0.4,
    "action": 0.2,
}
# Logit gain at 512 reasoning tokens (saturating in log tokens); hard categories gain most.
REASONING_GAIN = {
    "color": 0.1,
    "background": 0.05,
    "style": 0.05,
    "material": 0.25,
    "size": 0.3,
    "text": 0.6,
    "add": 0.6,
    "replace": 0.6,
    "extract": 0.9,
    "remove": 1.1,
    "action": 1.3,
}
SKILL = {"flux-kontext": 0.45, "step1x-edit": 0.25, "bagel": 0.35}
REASONING_EFFECT = {"flux-kontext": 0.6, "step1x-edit": 0.6, "bagel": 1.0}


@dataclass(frozen=True)
class FailureModel:
    """Knobs of the simulated failure model (defaults tuned to the realism targets in docs/testbed.md)."""

    latent_scale: float = 1.1  # spread of the per-request difficulty (shared by all its attempts)
    clutter_penalty: float = 0.12  # per extra object, for edits with a reference
    small_penalty: float = 0.9  # small targets are harder
    ambiguity_penalty: float = 1.3
    relation_penalty: float = 0.35
    compose_penalty: float = 0.5  # per extra edit in the sentence
    block_scale: float = 0.35  # P(blocked) = block_scale * sigmoid(-hardest edit logit)
    p_artifact: float = 0.1
    p_leak_base: float = 0.03
    p_leak_per_object: float = 0.006
    p_fix_guided: float = 0.75
    p_fix_blind: float = 0.18
    refine_side_effects: float = 0.4  # refinement side effects relative to round 0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _hash_u64(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


@dataclass
class _State:
    source: Scene
    size: int
    instruction: str
    edits: tuple[Edit, ...]
    target: Scene
    oids: list[int | None]
    z: float
    blocked: int | None  # index of the edit the model cannot do, if any
    source_key: str = ""


class SyntheticBackbone:
    """Simulated backbone of the testbed; ``backbone`` picks the cost model and skill profile."""

    supports_preview = True
    supports_mask = True
    supports_reasoning = True

    def __init__(self, backbone: str = "bagel", failure: FailureModel | None = None):
        self.cost: BackboneCost = get_cost(backbone)
        self.name = f"testbed:{backbone}"  # the trace's backbone field; never confused with the real model
        self.imitates = backbone
        self.failure = failure or FailureModel()

    @property
    def preview_step(self) -> int:
        """The denoising step the loop previews at: the cost model's, as the generator logs it."""
        return self.cost.preview_step

    # ---- difficulty ----------------------------------------------------------------------

    def edit_logit(
        self, e: Edit, source: Scene, n_edits: int, reasoning_tokens: int, z: float = 0.0
    ) -> float:
        f = self.failure
        op = e.op
        logit = BASE_LOGIT[op] + SKILL[self.imitates] + f.latent_scale * z - f.compose_penalty * (n_edits - 1)
        gain = REASONING_GAIN[op] + (0.4 if n_edits > 1 else 0.0)
        if e.ref is not None:
            o = resolve(e.ref, source)
            logit -= f.clutter_penalty * (len(source.objects) - 1)
            if o is not None and o.size == "small":
                logit -= f.small_penalty
            if is_ambiguous(e.ref, source):
                logit -= f.ambiguity_penalty
                gain += 0.8  # thinking resolves references
            if e.ref.relation is not None:
                logit -= f.relation_penalty
        t = max(0, reasoning_tokens)
        logit += gain * REASONING_EFFECT[self.imitates] * math.log1p(t / 128) / math.log1p(4)
        return logit

    def prepare(self, request: EditRequest) -> _State:
        current, _ = read_scenes(request.image, "request image")
        return self.state_for(current, request.image.size[0], request.instruction)

    def state_for(self, source: Scene, size: int, instruction: str) -> _State:
        """The request state from a scene (``prepare`` reads it from the image); the generator's entry."""
        edits = parse(instruction)
        oids = target_oids(edits, source)
        h = _hash_u64(source.key(), repr(edits), self.name)
        rng = np.random.default_rng(h)
        z = float(rng.normal())
        hardest = min(self.edit_logit(e, source, len(edits), 0) for e in edits)
        blocked = (
            int(rng.integers(len(edits)))
            if rng.random() < self.failure.block_scale * _sigmoid(-hardest)
            else None
        )
        target = apply_edits(source, edits)
        return _State(source, size, instruction, edits, target, oids, z, blocked, source.key())

    # ---- one attempt ---------------------------------------------------------------------

    def run(self, state: _State, spec: AttemptSpec) -> AttemptOutput:
        instruction, flaws = split_feedback(spec.prompt)
        if instruction.rstrip(".") != state.instruction.strip().rstrip("."):
            state = self.state_for(state.source, state.size, instruction)
        if spec.input_image is not None:
            current, _ = parse_chunk(spec.input_image.info.get(CHUNK_KEY), "input image")
            in_pixels = np.asarray(spec.input_image.convert("RGB"))
        else:
            current, in_pixels = state.source, None
        digest = hashlib.blake2b(spec.prompt.encode(), digest_size=4).digest()
        rng = np.random.default_rng(
            [spec.seed & 0xFFFFFFFF, spec.round, spec.reasoning_tokens, int.from_bytes(digest)]
        )
        refine = spec.round > 0 or (spec.input_image is not None and current.key() != state.source_key)
        out = self._refine(state, current, flaws, spec, rng) if refine else self._first(state, spec, rng)
        out_key = out.key()
        pixels = render(out, state.size, out_key)
        if spec.mask is not None:
            out, pixels = self._confine(state, current, out, pixels, spec.mask, in_pixels)
            out_key = out.key()
        image = make_image(out, state.source, state.size, pixels, keys=(out_key, state.source_key))
        nfe = self.cost.nfe
        preview = None
        if spec.preview_fn is not None:
            step = spec.preview_step or self.cost.preview_step
            preview = _degrade(pixels, image.info[CHUNK_KEY])
            if not spec.preview_fn(preview, step):
                nfe = pruned_nfe(nfe, step * self.cost.nfe_per_step)
                lat = self.cost.latency(nfe, spec.reasoning_tokens)
                return AttemptOutput(image=None, nfe=nfe, latency_s=lat, pruned=True, preview_image=preview)
        lat = self.cost.latency(nfe, spec.reasoning_tokens)
        return AttemptOutput(image=image, nfe=nfe, latency_s=lat, preview_image=preview)

    def _first(self, st: _State, spec: AttemptSpec, rng: np.random.Generator) -> Scene:
        out = st.source.copy()
        n = len(st.edits)
        for i, (e, oid) in enumerate(zip(st.edits, st.oids, strict=True)):
            p = _sigmoid(self.edit_logit(e, st.source, n, spec.reasoning_tokens, st.z))
            if st.blocked == i:
                # the same failure every time: the model cannot do this edit
                modes = ("wrong_value", "partial", "no_change") + (
                    ("wrong_target",) if e.ref is not None else ()
                )
                _fail(out, e, oid, modes[int(st.z * 1000) % len(modes)], rng, st.source)
            elif rng.random() < p:
                apply_edit(out, e, oid)
            else:
                modes = ["wrong_value", "partial", "no_change"]
                w = [1.0, 1.0, 0.7]
                if e.ref is not None and len(st.source.objects) > 1:
                    modes.append("wrong_target")
                    w.append(0.6 + 2.0 * is_ambiguous(e.ref, st.source) + 0.8 * (e.ref.relation is not None))
                w_arr = np.array(w) / sum(w)
                _fail(out, e, oid, modes[int(rng.choice(len(modes), p=w_arr))], rng, st.source)
        self._side_effects(out, st, rng, 1.0)
        return out

    def _refine(
        self, st: _State, current: Scene, flaws, spec: AttemptSpec, rng: np.random.Generator
    ) -> Scene:
        f = self.failure
        out = current.copy()
        blocked: set[tuple] = set()
        if st.blocked is not None:
            e, oid = st.edits[st.blocked], st.oids[st.blocked]
            blocked.add(("obj", oid) if oid is not None else (e.op,))
            if e.op == "extract":  # everything an extraction touches stays wrong
                blocked |= {("background",), ("style",)} | {("obj", o.oid) for o in st.source.objects}
        defects = diff(current, st.target, st.source, st.edits)
        bonus = 0.3 * math.log1p(spec.reasoning_tokens / 128) / math.log1p(4)
        drop_artifacts = set()
        for d in defects:
            if d.key in blocked:
                continue
            cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
            guided = any(fl.box[0] <= cx <= fl.box[2] and fl.box[1] <= cy <= fl.box[3] for fl in flaws)
            p = f.p_fix_guided if guided else f.p_fix_blind
            if rng.random() < min(0.97, p + bonus * (1 - p)):
                if d.key[0] == "artifact":
                    drop_artifacts.add(d.key[1])
                else:
                    _fix(out, st.target, d)
        out.artifacts = [a for i, a in enumerate(out.artifacts) if i not in drop_artifacts]
        self._side_effects(out, st, rng, f.refine_side_effects)
        return out

    def _side_effects(self, out: Scene, st: _State, rng: np.random.Generator, scale: float) -> None:
        f = self.failure
        if rng.random() < scale * f.p_artifact:
            out.artifacts.append(
                (
                    round(float(rng.uniform(0.1, 0.9)), 3),
                    round(float(rng.uniform(0.1, 0.9)), 3),
                    round(float(rng.uniform(0.03, 0.08)), 3),
                )
            )
        others = [o for o in out.objects if o.oid not in st.oids]
        if others and rng.random() < scale * (f.p_leak_base + f.p_leak_per_object * len(st.source.objects)):
            o = others[int(rng.integers(len(others)))]
            o.color = str(rng.choice([c for c in COLORS if c != o.color]))

    def _confine(self, st, current: Scene, out: Scene, pixels, mask, in_pixels):
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


_PREVIEW_CACHE: dict[str, Image.Image] = {}


def _degrade(pixels: np.ndarray, key: str) -> Image.Image:
    """An early-step preview: blurred, noised final output (what a one-step x0 estimate looks like).

    The noise is seeded by the output's content, so equal outputs have equal previews (and cache).
    """
    key = f"{pixels.shape[0]}:{key}"
    hit = _PREVIEW_CACHE.get(key)
    if hit is not None:
        return hit.copy()
    if len(_PREVIEW_CACHE) > 512:
        _PREVIEW_CACHE.clear()
    rng = np.random.default_rng(_hash_u64(key, "preview"))
    n = pixels.shape[0]
    small = np.asarray(Image.fromarray(pixels).reduce(4), dtype=np.float32)
    noisy = np.clip(small + rng.normal(0, 18, small.shape), 0, 255).astype(np.uint8)
    out = Image.fromarray(noisy).resize((n, n), Image.BILINEAR)
    _PREVIEW_CACHE[key] = out
    return out.copy()


def _other(values, cur, rng):
    return str(rng.choice([v for v in values if v != cur]))


def _fail(out: Scene, e: Edit, oid: int | None, mode: str, rng: np.random.Generator, source: Scene) -> None:
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


def _fix(out: Scene, target: Scene, d: Defect) -> None:
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
