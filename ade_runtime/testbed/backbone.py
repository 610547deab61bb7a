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
Here is the skill model (what succeeds, how often); ``outcomes.py`` realises the result on the scene
(failure modes, fixes, the mask, the preview).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.feedback import split_feedback
from ade_runtime.policy.budget import pruned_nfe
from ade_runtime.testbed.costs import BackboneCost, get_cost
from ade_runtime.testbed.imageio import CHUNK_KEY, make_image, parse_chunk, read_scenes
from ade_runtime.testbed.instructions import Edit, is_ambiguous, parse, resolve
from ade_runtime.testbed.judge import diff
from ade_runtime.testbed.outcomes import confine, degrade_preview, fail_edit, fix_defect, hash_u64
from ade_runtime.testbed.scene import (
    COLORS,
    Scene,
    render,
)
from ade_runtime.testbed.world import apply_edit, apply_edits, target_oids

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
        h = hash_u64(source.key(), repr(edits), self.name)
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
            out, pixels = confine(current, out, pixels, spec.mask, in_pixels)
            out_key = out.key()
        # the attempt's own sample: attempts landing on the same scene still differ (imageio.grain)
        sample = int.from_bytes(
            hashlib.blake2b(
                f"{spec.seed}/{spec.round}/{spec.reasoning_tokens}".encode() + digest, digest_size=4
            ).digest(),
            "little",
        )
        image = make_image(
            out,
            state.source,
            state.size,
            pixels,
            keys=(out_key, state.source_key),
            sample=sample,
            allow=spec.mask,
        )
        nfe = self.cost.nfe
        preview = None
        if spec.preview_fn is not None:
            step = spec.preview_step or self.cost.preview_step
            preview = degrade_preview(pixels, image.info[CHUNK_KEY])
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
                fail_edit(out, e, oid, modes[int(st.z * 1000) % len(modes)], rng, st.source)
            elif rng.random() < p:
                apply_edit(out, e, oid)
            else:
                modes = ["wrong_value", "partial", "no_change"]
                w = [1.0, 1.0, 0.7]
                if e.ref is not None and len(st.source.objects) > 1:
                    modes.append("wrong_target")
                    w.append(0.6 + 2.0 * is_ambiguous(e.ref, st.source) + 0.8 * (e.ref.relation is not None))
                w_arr = np.array(w) / sum(w)
                fail_edit(out, e, oid, modes[int(rng.choice(len(modes), p=w_arr))], rng, st.source)
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
                    fix_defect(out, st.target, d)
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
