"""DiffusersEditBackbone on the tiny Kontext pipeline; Step1X-Edit and BAGEL routing, mapping and errors.

Step1X-Edit's ``inference`` and BAGEL's ``inferencer`` are external repositories, so tiny stand-in
modules are injected into ``sys.modules`` to check the argument mapping; our own code is not mocked.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from ade_runtime.backbones.bagel import BagelBackbone, BagelConfig, inferencer_class  # noqa: E402
from ade_runtime.backbones.base import AttemptSpec, Backbone, EditRequest  # noqa: E402
from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone  # noqa: E402
from ade_runtime.backbones.step1x import Step1XEditBackbone  # noqa: E402
from ade_runtime.errors import BackboneUnavailableError, InputError  # noqa: E402
from ade_train.bench.tiny_flux import test_image, tiny_kontext_pipeline  # noqa: E402

STEPS = 3
KW = {"_auto_resize": False, "max_sequence_length": 32, "guidance_scale": 2.5}


@pytest.fixture(scope="module")
def pipe():
    return tiny_kontext_pipeline()


def count_calls(module):
    box = [0]
    handle = module.register_forward_hook(lambda *_: box.__setitem__(0, box[0] + 1))
    return box, handle


def test_generic_equals_plain_call_and_prunes(pipe):
    img = test_image(16, 12)
    bb = DiffusersEditBackbone(pipe, name="flux-kontext-generic", num_inference_steps=STEPS, call_kwargs=KW)
    assert isinstance(bb, Backbone) and bb.supports_preview and not bb.supports_mask
    state = bb.prepare(EditRequest(img, "add a hat"))
    out = bb.run(state, AttemptSpec(0, 0, 0, "add a hat", seed=11))
    ref = pipe(
        image=img, prompt="add a hat", height=12, width=16, max_area=16 * 12, num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(11), **KW,
    ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(out.image), np.asarray(ref)) and out.nfe == STEPS

    dec, h1 = count_calls(pipe.vae.decoder)
    tr, h2 = count_calls(pipe.transformer)
    try:
        pruned = bb.run(
            state, AttemptSpec(1, 0, 0, "add a hat", seed=12, preview_step=1, preview_fn=lambda i, s: False)
        )
    finally:
        h1.remove()
        h2.remove()
    assert pruned.pruned and pruned.image is None and pruned.preview_image.size == img.size
    assert pruned.nfe == 1 and tr[0] == 1 and dec[0] == 1 and pruned.extra["decode_skipped"]

    kept = bb.run(
        state, AttemptSpec(0, 0, 0, "add a hat", seed=11, preview_step=2, preview_fn=lambda i, s: True)
    )
    assert np.array_equal(np.asarray(kept.image), np.asarray(out.image))


def test_generic_without_decoder_has_no_preview(pipe):
    img = test_image(16, 12)
    bb = DiffusersEditBackbone(pipe, num_inference_steps=2, call_kwargs=KW, decode_latents=None)
    assert not bb.supports_preview
    state = bb.prepare(EditRequest(img, "add a hat"))
    with pytest.raises(InputError, match="cannot preview"):
        bb.run(state, AttemptSpec(0, 0, 0, "add a hat", seed=1, preview_step=1, preview_fn=lambda i, s: True))
    mask = np.zeros((12, 16), np.float32)
    mask[:, :8] = 1
    out = bb.run(state, AttemptSpec(0, 0, 0, "add a hat", seed=1, mask=mask))
    a, b = np.asarray(out.image, dtype=int), np.asarray(img, dtype=int)
    assert np.array_equal(a[:, 8:], b[:, 8:]) and out.extra["mask_mode"] == "pixel_composite"


def test_generic_rejects_non_edit_pipelines():
    class NotAPipeline:
        transformer = torch.nn.Identity()

        def __call__(self, prompt):
            return prompt

    with pytest.raises(InputError, match="callback_on_step_end"):
        DiffusersEditBackbone(NotAPipeline())


def test_step1x_unavailable_names_both_installs(monkeypatch):
    import diffusers

    monkeypatch.delattr(diffusers, "Step1XEditPipeline", raising=False)
    monkeypatch.setitem(sys.modules, "inference", None)  # the repository is not on PYTHONPATH
    with pytest.raises(BackboneUnavailableError) as err:
        Step1XEditBackbone.from_pretrained("/models/step1x")
    assert "Step1XEditPipeline" in str(err.value) and "stepfun-ai/Step1X-Edit" in str(err.value)
    assert "12249" in str(err.value)
    with pytest.raises(BackboneUnavailableError):
        Step1XEditBackbone.from_pretrained("/models/step1x", route="diffusers")


def test_step1x_repo_route_maps_arguments(monkeypatch, tmp_path):
    calls = {}

    class ImageGenerator:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate_image(self, prompt, **kwargs):
            calls["gen"] = (prompt, kwargs)
            return [Image.new("RGB", (64, 48), (1, 2, 3))]

    module = types.ModuleType("inference")
    module.ImageGenerator = ImageGenerator
    monkeypatch.setitem(sys.modules, "inference", module)
    for name in ("step1x-edit-i1258.safetensors", "vae.safetensors"):
        (tmp_path / name).touch()
    bb = Step1XEditBackbone.from_pretrained(
        str(tmp_path), route="repo", quantized=True, offload=True, num_steps=8
    )
    assert isinstance(bb, Backbone)
    assert calls["init"]["quantized"] and calls["init"]["offload"]
    assert calls["init"]["dit_path"] == os.path.join(str(tmp_path), "step1x-edit-i1258.safetensors")
    src = test_image(30, 20)
    out = bb.run(bb.prepare(EditRequest(src, "add a cat")), AttemptSpec(0, 0, 0, "add a cat", seed=5))
    prompt, kw = calls["gen"]
    assert (
        prompt == "add a cat"
        and kw["seed"] == 5
        and kw["num_steps"] == 8
        and kw["ref_images"].size == (30, 20)
    )
    assert out.image.size == (30, 20) and out.nfe == 16
    with pytest.raises(InputError, match="previews nor masks"):
        bb.run(src, AttemptSpec(0, 0, 0, "x", seed=0, mask=np.ones((20, 30))))


class FakeInterleaveInferencer:
    """Stands in for BAGEL's InterleaveInferencer: records its arguments, returns a smaller image."""

    def __init__(self, *components):
        self.components = components
        self.calls = []

    def __call__(self, image=None, text=None, **kwargs):
        self.calls.append((image, text, kwargs))
        thought = "<think>plan</think>" if kwargs.get("think") else None
        return {"image": image.resize((image.width // 2, image.height // 2)), "text": thought}


def test_bagel_maps_reasoning_tokens_and_defaults(monkeypatch):
    module = types.ModuleType("inferencer")
    module.InterleaveInferencer = FakeInterleaveInferencer
    monkeypatch.setitem(sys.modules, "inferencer", module)
    bb = BagelBackbone.from_components("model", "vae", "tok", "vae_t", "vit_t", {"eos_token_id": 1})
    assert isinstance(bb, Backbone) and bb.supports_reasoning
    assert bb.inferencer.components[-1] == {"eos_token_id": 1}
    src = test_image(300, 200)
    state = bb.prepare(EditRequest(src, "make the sky red"))
    thinking = bb.run(state, AttemptSpec(0, 0, 256, "make the sky red", seed=0))
    plain = bb.run(state, AttemptSpec(1, 0, 0, "make the sky red", seed=1))
    (img1, text1, kw1), (_, _, kw0) = bb.inferencer.calls
    assert kw1["think"] is True and kw1["max_think_token_n"] == 256
    assert kw0["think"] is False and "max_think_token_n" not in kw0
    assert kw1["cfg_renorm_min"] == 0.0 and max(img1.size) == 1024 and img1.size == (1024, 683)
    assert text1 == "make the sky red"
    assert thinking.image.size == src.size and thinking.extra["think_text"] == "<think>plan</think>"
    assert plain.extra["think_text"] is None and plain.nfe == thinking.nfe == BagelConfig().modelled_nfe()
    with pytest.raises(InputError, match="reasoning_tokens"):
        bb.run(state, AttemptSpec(0, 0, -1, "x", seed=0))


def test_bagel_config_and_absent_package(monkeypatch):
    cfg = BagelConfig(num_timesteps=11, cfg_interval=(0.0, 1.0))
    assert cfg.modelled_nfe() == 10 * 3  # every step inside the interval, text + image CFG branches
    assert BagelConfig(num_timesteps=11, cfg_text_scale=1.0, cfg_img_scale=1.0).modelled_nfe() == 10
    assert BagelConfig(num_timesteps=11, cfg_interval=(0.4, 1.0)).modelled_nfe() < 30
    for bad in (
        {"cfg_interval": (0.5, 0.2)},
        {"num_timesteps": 1},
        {"longest_side": 4},
        {"cfg_renorm_type": "x"},
    ):
        with pytest.raises(InputError, match="BagelConfig"):
            BagelConfig(**bad)
    monkeypatch.setitem(sys.modules, "inferencer", None)
    with pytest.raises(BackboneUnavailableError, match="ByteDance-Seed/Bagel"):
        inferencer_class()
    with pytest.raises(BackboneUnavailableError):
        BagelBackbone.from_components("m")


def test_bagel_from_pretrained_without_repo_modules(monkeypatch):
    module = types.ModuleType("inferencer")
    module.InterleaveInferencer = FakeInterleaveInferencer
    monkeypatch.setitem(sys.modules, "inferencer", module)
    monkeypatch.setitem(sys.modules, "modeling", None)  # the rest of the BAGEL repository is absent
    monkeypatch.setitem(sys.modules, "data", None)
    with pytest.raises(BackboneUnavailableError, match="ByteDance-Seed/Bagel"):
        BagelBackbone.from_pretrained("/models/bagel")


def test_from_pretrained_loads_a_saved_pipeline(pipe, tmp_path):
    from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

    pipe.save_pretrained(tmp_path / "tiny-kontext")
    img = test_image(16, 12)
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=4)
    kw = {"num_inference_steps": 2, "resolution": "input", "max_sequence_length": 32}
    ref = FluxKontextBackbone(pipe, **kw)
    loaded = FluxKontextBackbone.from_pretrained(
        str(tmp_path / "tiny-kontext"), torch_dtype=torch.float32, **kw
    )
    a = ref.run(ref.prepare(EditRequest(img, spec.prompt)), spec)
    b = loaded.run(loaded.prepare(EditRequest(img, spec.prompt)), spec)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    generic = DiffusersEditBackbone.from_pretrained(
        str(tmp_path / "tiny-kontext"), torch_dtype=torch.float32, num_inference_steps=2, call_kwargs=KW
    )
    assert generic.name == "FluxKontextPipeline" and generic.supports_preview
    assert generic.run(generic.prepare(EditRequest(img, spec.prompt)), spec).image.size == img.size
