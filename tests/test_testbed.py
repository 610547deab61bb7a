"""Black-box tests of the synthetic edit world: scenes, instructions, backbone, judge, scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ade_runtime.backbones import load_backbone
from ade_runtime.backbones.base import AttemptSpec, Backbone, EditRequest
from ade_runtime.errors import InputError
from ade_runtime.feedback import feedback_prompt
from ade_runtime.testbed import (
    CATEGORIES,
    COSTS,
    Scene,
    SyntheticBackbone,
    World,
    apply_edits,
    judge_attempt,
    load_png,
    make_image,
    online_scores,
    parse,
    read_scenes,
    render,
    save_png,
)
from ade_runtime.traces.records import Judge


@given(seed=st.integers(0, 2**31 - 1), cat=st.sampled_from(CATEGORIES))
@settings(max_examples=150, deadline=None)
def test_parse_inverts_phrase_and_target_is_exact(seed, cat):
    world = World(seed=0, size=64)
    req = world.sample_request(np.random.default_rng(seed), (cat,))
    assert parse(req.instruction) == req.edits
    assert req.category == cat
    assert apply_edits(req.source, parse(req.instruction)).key() == req.target.key()
    assert req.target.key() != req.source.key()  # every instruction asks for a visible change


def test_scene_json_round_trip_and_render_determinism(tmp_path):
    req = World(seed=1, size=96).sample_request(np.random.default_rng(5))
    again = Scene.from_json(req.source.to_json())
    assert again.key() == req.source.key()
    a, b = render(req.source, 96), render(again, 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    img = make_image(req.source, req.source, 96)
    save_png(img, tmp_path / "s.png")
    back = load_png(tmp_path / "s.png")
    scene, source = read_scenes(back)
    assert scene.key() == req.source.key() and source.key() == req.source.key()
    assert np.array_equal(np.asarray(back), a)


def test_world_rejects_bad_options():
    with pytest.raises(InputError, match="size"):
        World(size=8)
    with pytest.raises(InputError, match="categories"):
        World().sample_request(np.random.default_rng(0), ("teleport",))


def test_unparseable_prompt_names_the_grammar():
    with pytest.raises(InputError, match="grammar"):
        parse("Please make it nicer")


def _request(seed=3, cat=None, size=64):
    req = World(seed=0, size=size).sample_request(np.random.default_rng(seed), cat)
    return req, make_image(req.source, req.source, size)


def test_backbone_protocol_and_determinism():
    bb = SyntheticBackbone("flux-kontext")
    assert (
        isinstance(bb, Backbone) and type(load_backbone("testbed", model="flux-kontext")) is SyntheticBackbone
    )
    assert (
        bb.supports_preview
        and bb.supports_mask
        and bb.supports_reasoning
        and bb.name == "testbed:flux-kontext"
    )
    req, img = _request()
    state = bb.prepare(EditRequest(image=img, instruction=req.instruction))
    spec = AttemptSpec(candidate=0, round=0, reasoning_tokens=0, prompt=req.instruction, seed=11)
    a, b = bb.run(state, spec), bb.run(state, spec)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.nfe == COSTS["flux-kontext"].nfe == 28 and a.latency_s > 0
    outs = {
        bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=s)).image.info["ade-testbed"]
        for s in range(30)
    }
    assert len(outs) > 1  # different seeds give different attempts


def test_reasoning_tokens_cost_latency():
    bb = SyntheticBackbone("bagel")
    req, img = _request()
    state = bb.prepare(EditRequest(image=img, instruction=req.instruction))
    t0 = bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=1))
    t1 = bb.run(state, AttemptSpec(0, 0, 512, req.instruction, seed=1))
    assert t1.latency_s == pytest.approx(t0.latency_s + 512 * COSTS["bagel"].s_per_reasoning_token)


def test_real_images_are_refused():
    bb = SyntheticBackbone()
    photo = Image.new("RGB", (64, 64), (10, 20, 30))
    with pytest.raises(InputError, match="testbed"):
        bb.prepare(EditRequest(image=photo, instruction="Remove the red star."))


def test_preview_prunes_and_counts_nfe():
    bb = SyntheticBackbone("step1x-edit")
    req, img = _request(4)
    state = bb.prepare(EditRequest(image=img, instruction=req.instruction))
    seen = []
    spec = AttemptSpec(
        0, 0, 0, req.instruction, seed=2, preview_step=6, preview_fn=lambda im, s: seen.append(s) or False
    )
    out = bb.run(state, spec)
    assert out.pruned and out.image is None and out.nfe == 6 * 2 and seen == [6]
    assert out.preview_image is not None and out.preview_image.size == img.size
    full = bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=2, preview_fn=lambda im, s: True))
    assert not full.pruned and full.nfe == 56 and full.latency_s > out.latency_s


def test_mask_keeps_outside_pixels_exactly():
    bb = SyntheticBackbone()
    for seed in range(20):
        req, img = _request(seed, ("background",))
        state = bb.prepare(EditRequest(image=img, instruction=req.instruction))
        mask = np.zeros((64, 64), np.float32)
        mask[:, :32] = 1.0
        out = bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=seed, mask=mask))
        a, b = np.asarray(out.image), np.asarray(img)
        assert np.array_equal(a[:, 32:], b[:, 32:])
    with pytest.raises(InputError, match="mask shape"):
        bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=0, mask=np.ones((3, 3))))


def test_judge_passes_the_exact_target_and_flags_no_change():
    req, img = _request(7, ("color",))
    target_img = make_image(req.target, req.source, 64)
    j = judge_attempt(img, target_img, req.instruction)
    assert isinstance(j, Judge) and j.passed and j.score == 1.0 and j.flaws == ()
    j0 = judge_attempt(img, img, req.instruction)
    assert not j0.passed and j0.score < 0.7
    assert [f.kind for f in j0.flaws] == ["no_change"]
    x0, y0, x1, y1 = j0.flaws[0].box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_guided_refinement_fixes_more_than_blind_retry():
    bb = SyntheticBackbone()
    world = World(seed=2, size=64)
    rng = np.random.default_rng(0)
    guided = blind = tried = 0
    while tried < 60:
        req = world.sample_request(rng)
        img = make_image(req.source, req.source, 64)
        state = bb.prepare(EditRequest(image=img, instruction=req.instruction))
        out = bb.run(state, AttemptSpec(0, 0, 0, req.instruction, seed=tried))
        j = judge_attempt(img, out.image, req.instruction)
        if j.passed:
            continue
        tried += 1
        for prompt, bump in ((feedback_prompt(req.instruction, j.flaws), 1), (req.instruction, 0)):
            o2 = bb.run(state, AttemptSpec(0, 1, 0, prompt, seed=tried, input_image=out.image))
            ok = judge_attempt(img, o2.image, req.instruction).passed
            guided += ok and bump
            blind += ok and not bump
    assert guided > blind + 10


def test_online_scores_are_deterministic_and_informative():
    req, img = _request(9, ("color",))
    target_img = make_image(req.target, req.source, 64)
    s1 = online_scores(img, target_img, req.instruction)
    assert s1 == online_scores(img, target_img, req.instruction)
    assert set(s1) == {"clip_t", "clip_i"} and all(np.isfinite(v) for v in s1.values())
    same = online_scores(img, img, req.instruction)
    assert same["clip_i"] > s1["clip_i"]  # an unchanged image is the most similar to its source


def test_judge_names_wrong_target_where_the_fix_is_needed():
    from ade_runtime.testbed import Obj

    src = Scene(
        objects=[Obj(0, "circle", "red", "medium", 0.2, 0.5), Obj(1, "square", "green", "medium", 0.8, 0.5)]
    )
    out = src.copy()
    out.objects[1].color = "blue"
    j = judge_attempt(make_image(src, src, 64), make_image(out, src, 64), "Turn the red circle blue.")
    kinds = {f.kind: f.box for f in j.flaws}
    assert not j.passed and set(kinds) == {"wrong_target", "leakage"}
    assert (
        kinds["wrong_target"][2] < 0.5 < kinds["leakage"][0]
    )  # intended object on the left, leak on the right
    fixed = src.copy()
    fixed.objects[0].color = "blue"
    fixed.artifacts.append((0.8, 0.2, 0.04))
    jf = judge_attempt(make_image(src, src, 64), make_image(fixed, src, 64), "Turn the red circle blue.")
    assert jf.passed and [f.kind for f in jf.flaws] == ["artifact"] and jf.score < 1
