"""FluxKontextBackbone on a tiny FluxKontextPipeline built in code (see ade_train/bench/tiny_flux.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from ade_runtime.backbones.base import AttemptSpec, Backbone, EditRequest
from ade_runtime.backbones.flux_kontext import FluxKontextBackbone
from ade_runtime.errors import InputError
from ade_train.bench.tiny_flux import test_image, tiny_kontext_pipeline

STEPS = 4
PROMPT = "make the sky red"


@pytest.fixture(scope="module")
def pipe():
    return tiny_kontext_pipeline()


class Calls:
    """Counts forward calls of named submodules with plain forward hooks (no mocking)."""

    def __init__(self, **modules):
        self.n = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in modules.items()]

    def _hook(self, key):
        def hook(*_):
            self.n[key] += 1

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def counters(pipe):
    return Calls(
        transformer=pipe.transformer,
        clip=pipe.text_encoder,
        t5=pipe.text_encoder_2,
        vae_enc=pipe.vae.encoder,
        vae_dec=pipe.vae.decoder,
    )


def backbone(pipe, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("resolution", "input")
    kw.setdefault("max_sequence_length", 32)
    return FluxKontextBackbone(pipe, **kw)


def plain_call(pipe, image, seed, **kw):
    w, h = image.size
    return pipe(
        image=image,
        prompt=PROMPT,
        height=h,
        width=w,
        max_area=w * h,
        _auto_resize=False,
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    ).images[0]


def px(img):
    return np.asarray(img, dtype=np.int16)


def test_protocol_and_equals_plain_pipeline(pipe):
    img = test_image(24, 16)
    bb = backbone(pipe)
    assert isinstance(bb, Backbone)
    state = bb.prepare(EditRequest(img, PROMPT))
    out = bb.run(state, AttemptSpec(candidate=0, round=0, reasoning_tokens=0, prompt=PROMPT, seed=7))
    ref = plain_call(pipe, img, 7)
    assert out.image.size == img.size and not out.pruned
    assert np.array_equal(px(out.image), px(ref))
    assert out.nfe == STEPS and out.latency_s > 0
    assert out.extra["resolution"] == {"policy": "input", "working": [24, 16], "input": [24, 16]}


def test_true_cfg_kept_when_passing_embeddings(pipe):
    img = test_image(16, 16)
    bb = backbone(pipe, negative_prompt="bad quality blurry", true_cfg_scale=2.0)
    state = bb.prepare(EditRequest(img, PROMPT))
    out = bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=3))
    ref = plain_call(pipe, img, 3, negative_prompt="bad quality blurry", true_cfg_scale=2.0)
    no_cfg = plain_call(pipe, img, 3)
    assert out.nfe == 2 * STEPS  # conditional + negative call per step
    assert np.array_equal(px(out.image), px(ref))
    assert not np.array_equal(px(ref), px(no_cfg))
    with pytest.raises(InputError, match="negative_prompt"):
        backbone(pipe, true_cfg_scale=2.0)


@pytest.mark.parametrize("k", [1, 2])
def test_prune_interrupts_and_skips_decode(pipe, k):
    img = test_image(16, 16)
    bb = backbone(pipe)
    state = bb.prepare(EditRequest(img, PROMPT))
    seen = []

    def reject(preview, step):
        seen.append((preview.size, step))
        return False

    c = counters(pipe)
    try:
        out = bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=1, preview_step=k, preview_fn=reject))
    finally:
        c.close()
    assert out.pruned and out.image is None and out.preview_image is not None
    assert seen == [((16, 16), k)]
    assert out.nfe == k and c.n["transformer"] == k
    assert c.n["vae_dec"] == 1  # the preview only; the final decode is skipped
    assert c.n["vae_enc"] == 0  # source latents came from prepare


def test_accepted_preview_does_not_change_output(pipe):
    img = test_image(16, 16)
    bb = backbone(pipe)
    state = bb.prepare(EditRequest(img, PROMPT))
    plain = bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=2))
    c = counters(pipe)
    try:
        out = bb.run(
            state, AttemptSpec(0, 0, 0, PROMPT, seed=2, preview_step=2, preview_fn=lambda im, s: True)
        )
    finally:
        c.close()
    assert not out.pruned and out.nfe == STEPS and c.n["vae_dec"] == 2
    assert np.array_equal(px(out.image), px(plain.image))
    # the x0 preview after the final step is the final sample itself
    last = bb.run(
        state, AttemptSpec(0, 0, 0, PROMPT, seed=2, preview_step=STEPS, preview_fn=lambda im, s: True)
    )
    assert np.array_equal(px(last.preview_image), px(plain.image))


def test_encodes_once_per_request_and_per_new_prompt(pipe):
    img = test_image(16, 16)
    bb = backbone(pipe)
    c = counters(pipe)
    try:
        state = bb.prepare(EditRequest(img, PROMPT))
        outs = [bb.run(state, AttemptSpec(i, 0, 0, PROMPT, seed=i)) for i in range(3)]
        assert (c.n["clip"], c.n["t5"], c.n["vae_enc"]) == (1, 1, 1)
        assert c.n["transformer"] == 3 * STEPS
        new = "add a hat"
        bb.run(state, AttemptSpec(0, 1, 0, new, seed=9, input_image=outs[0].image))
        bb.run(state, AttemptSpec(1, 1, 0, new, seed=9, input_image=outs[1].image))
        assert (c.n["clip"], c.n["t5"]) == (2, 2)  # the refinement prompt once
        assert c.n["vae_enc"] == 1  # refinement inputs reuse the previous rounds' final latents
    finally:
        c.close()
    assert len({px(o.image).tobytes() for o in outs}) == 3  # different seeds, different candidates

    no_reuse = backbone(pipe, reuse_output_latents=False)
    c = counters(pipe)
    try:
        state = no_reuse.prepare(EditRequest(img, PROMPT))
        out = no_reuse.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=0))
        no_reuse.run(state, AttemptSpec(0, 1, 0, PROMPT, seed=0, input_image=out.image))
        no_reuse.run(state, AttemptSpec(1, 1, 0, PROMPT, seed=1, input_image=out.image))
        assert c.n["vae_enc"] == 2  # source once, the round-0 output once
    finally:
        c.close()


def test_mask_keeps_outside_equal_to_input(pipe):
    img = test_image(24, 16)
    bb = backbone(pipe)
    state = bb.prepare(EditRequest(img, PROMPT))
    first = bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=4))
    mask = np.zeros((16, 24), np.float32)
    mask[2:10, 4:14] = 1.0
    out = bb.run(state, AttemptSpec(0, 1, 0, "add a cat", seed=5, input_image=first.image, mask=mask))
    diff = np.abs(px(out.image) - px(first.image))
    assert diff[mask == 0].max() == 0
    assert diff[mask == 1].max() > 0
    with pytest.raises(InputError, match="spec.mask has shape"):
        bb.run(state, AttemptSpec(0, 1, 0, "add a cat", seed=5, mask=np.ones((4, 4))))


def test_resolution_policy_is_explicit(pipe):
    img = test_image(21, 13)
    bb = backbone(pipe)
    state = bb.prepare(EditRequest(img, PROMPT))
    out = bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=0))
    assert out.image.size == (21, 13)
    assert out.extra["resolution"]["working"] == [20, 12]
    capped = backbone(pipe, max_area=16 * 16)
    assert capped.working_size((64, 32)) == (22, 10)
    preferred = backbone(pipe, resolution="preferred")
    assert preferred.working_size((1000, 600)) == (1328, 800)  # aspect 1.66, Kontext-trained
    assert preferred.working_size((512, 512)) == (1024, 1024)
    with pytest.raises(InputError, match="resolution"):
        backbone(pipe, resolution="auto")
    with pytest.raises(InputError, match="preview_step"):
        bb.run(
            state, AttemptSpec(0, 0, 0, PROMPT, seed=0, preview_step=STEPS + 1, preview_fn=lambda i, s: True)
        )


def test_default_preview_step_is_the_adapters(pipe):
    img = test_image(16, 16)
    assert FluxKontextBackbone(pipe).preview_step == 6  # 6 of the default 28 steps
    bb = backbone(pipe, preview_step=3)
    state = bb.prepare(EditRequest(img, PROMPT))
    steps_seen = []
    out = bb.run(
        state, AttemptSpec(0, 0, 0, PROMPT, seed=1, preview_fn=lambda im, s: steps_seen.append(s) or False)
    )
    assert out.pruned and out.nfe == 3 and steps_seen == [3]
    with pytest.raises(InputError, match="preview_step"):
        backbone(pipe, preview_step=STEPS + 1)


def test_preview_and_prune_are_callbacks_of_their_own_that_diffusers_composes(pipe):
    """ADE's per-step behaviours are separate PipelineCallback-shaped objects: diffusers' own
    MultiPipelineCallbacks runs them, and pruning stops the pipeline as its ``interrupt`` reads it."""
    from diffusers.callbacks import MultiPipelineCallbacks

    from ade_runtime.backbones.step_callbacks import (
        PreviewCallback,
        PruneCallback,
        SchedulerStepCapture,
        StepCallbacks,
    )

    nothing = StepCallbacks.for_attempt(None)
    assert nothing.callbacks == [] and nothing.tensor_inputs == []
    assert nothing.preview_image is None and not nothing.pruned
    seen = []

    def reject(image, step):
        seen.append((image, step))
        return False

    with SchedulerStepCapture(pipe.scheduler) as cap:
        preview = PreviewCallback(cap, 2, decode=lambda p, x0: tuple(x0.shape))
        prune = PruneCallback(preview, reject)
        c = counters(pipe)
        try:
            plain_call(
                pipe, test_image(16, 16), 1, callback_on_step_end=MultiPipelineCallbacks([preview, prune])
            )
        finally:
            c.close()
    assert prune.pruned and pipe.interrupt  # the public property reads the flag stop_pipeline sets
    assert c.n["transformer"] == 2 and len(seen) == 1 and seen[0][1] == 2
    assert seen[0][0] == preview.image and len(preview.image) == 3  # packed latents [1, tokens, channels]
