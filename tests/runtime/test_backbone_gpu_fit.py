"""Issue 23's fixes on tiny pipelines built in code: refusing what cannot fit, model CPU offload
(accelerate installed, previews that keep the transformer), Qwen-Image-Edit's resolution policy,
ChronoEdit's float32 components, and Step1X's dtype / version / mode forwarding."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from ade_runtime.backbones import _diffusers, load_backbone
from ade_runtime.backbones.base import AttemptSpec, EditRequest
from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone
from ade_runtime.backbones.flux_kontext import FluxKontextBackbone
from ade_runtime.backbones.memory import (
    DEFAULT_RESERVE_BYTES,
    check_fits,
    disk_component_bytes,
    module_component_bytes,
)
from ade_runtime.backbones.step1x import Step1XEditBackbone
from ade_runtime.errors import BackboneUnavailableError, InputError
from ade_train.bench.tiny_flux import test_image, tiny_kontext_pipeline, tiny_qwen_edit_pipeline

KONTEXT = {"num_inference_steps": 3, "resolution": "input", "max_sequence_length": 32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-kontext")
    tiny_kontext_pipeline().save_pretrained(d)
    return d


# ---- a model that cannot fit is refused with the GiB needed and the fix ----------------------------
def test_weights_counted_from_headers_equal_the_loaded_modules(saved):
    from diffusers import FluxKontextPipeline

    on_disk = disk_component_bytes(str(saved), torch.float32)
    loaded = module_component_bytes(FluxKontextPipeline.from_pretrained(saved, torch_dtype=torch.float32))
    assert set(on_disk) == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    for name, n in on_disk.items():  # loaded modules add non-persistent buffers (CLIP's position ids)
        assert n <= loaded[name] <= n + 1024, name
    halves = disk_component_bytes(str(saved), torch.bfloat16)
    assert sum(halves.values()) < 0.6 * sum(on_disk.values())  # floating tensors counted in bf16


def test_load_refuses_a_pipeline_larger_than_the_free_memory(saved):
    from diffusers import FluxKontextPipeline

    sizes = disk_component_bytes(str(saved), torch.float32)
    total, largest = sum(sizes.values()), max(sizes.values())
    tight = DEFAULT_RESERVE_BYTES + largest + 1  # the largest component fits, all of them do not
    assert tight < DEFAULT_RESERVE_BYTES + total
    with pytest.raises(InputError, match=r"GiB is free; use --cpu-offload \(one component on the GPU"):
        _diffusers.load_pipeline(
            FluxKontextPipeline, str(saved), device="cpu", torch_dtype="float32", free_bytes=tight
        )
    pipe = _diffusers.load_pipeline(
        FluxKontextPipeline,
        str(saved),
        device="cpu",
        torch_dtype="float32",
        free_bytes=tight,
        cpu_offload=True,
    )
    assert hasattr(pipe.transformer, "_hf_hook")  # offloaded, not refused
    with pytest.raises(InputError, match="even with --cpu-offload"):
        _diffusers.load_pipeline(
            FluxKontextPipeline,
            str(saved),
            device="cpu",
            torch_dtype="float32",
            free_bytes=1000,
            cpu_offload=True,
        )


def test_fit_message_names_every_component():
    gib = 2**30
    flux2 = {"transformer": 64 * gib, "text_encoder": 48 * gib, "vae": gib // 5}  # FLUX.2-dev in bf16
    with pytest.raises(InputError) as err:
        check_fits(flux2, device="cuda:0", what="black-forest-labs/FLUX.2-dev", free_bytes=79 * gib)
    msg = str(err.value)
    assert (
        "need 112.2 GiB (transformer 64.0, text_encoder 48.0, vae 0.2)" in msg and "79.0 GiB is free" in msg
    )
    assert "--cpu-offload" in msg and "66.0 GiB for transformer" in msg
    assert (
        check_fits(flux2, device="cuda:0", what="x", free_bytes=79 * gib, cpu_offload=True)["needed_gib"]
        == 66.0
    )


# ---- --cpu-offload reaches enable_model_cpu_offload; previews keep the transformer ----------------
def test_cpu_offload_reaches_enable_model_cpu_offload(saved):
    bb = load_backbone("flux-kontext", str(saved), device="cpu", dtype="float32", cpu_offload=True,
                       pipeline_kwargs=KONTEXT)  # fmt: skip
    assert bb.options["cpu_offload"] is True and hasattr(bb.pipe.transformer, "_hf_hook")
    assert [type(h).__name__ for h in bb.pipe._all_hooks][:1] == ["UserCpuOffloadHook"]
    img = test_image(16, 12)
    out = bb.run(bb.prepare(EditRequest(img, "add a hat")), AttemptSpec(0, 0, 0, "add a hat", seed=1))
    assert out.image.size == img.size and out.nfe == 3


def _vae_hook_calls(pipe):
    hook, counts = pipe.vae._hf_hook, {"n": 0}
    original = hook.pre_forward

    def counted(*a, **k):
        counts["n"] += 1
        return original(*a, **k)

    hook.pre_forward = counted  # the hook object is accelerate's, replaced at the end of each pipe call
    return counts


@pytest.mark.parametrize("mode, calls", [("keep", 0), ("chain", 1)])
def test_preview_under_offload_does_not_run_the_offload_chain(mode, calls):
    pipe = tiny_kontext_pipeline()
    reference = FluxKontextBackbone(tiny_kontext_pipeline(), **KONTEXT)
    pipe.enable_model_cpu_offload(device="cpu")
    bb = FluxKontextBackbone(pipe, offload_preview=mode, **KONTEXT)
    img = test_image(16, 12)
    state = bb.prepare(EditRequest(img, "add a hat"))
    seen = []
    spec = AttemptSpec(
        0, 0, 0, "add a hat", seed=2, preview_step=1, preview_fn=lambda im, k: seen.append(im) or True
    )
    counts = _vae_hook_calls(pipe)
    out = bb.run(state, spec)
    # The VAE's hook is what offloads the transformer (its predecessor in the chain) on a GPU.
    assert counts["n"] == calls and len(seen) == 1
    plain = reference.run(reference.prepare(EditRequest(img, "add a hat")), spec)
    assert np.array_equal(np.asarray(out.image), np.asarray(plain.image))  # same sample either way
    assert np.array_equal(np.asarray(out.preview_image), np.asarray(plain.preview_image))


# ---- Qwen-Image-Edit: upstream's resolution by default, stated ------------------------------------
def test_qwen_image_edit_generates_at_upstreams_size(monkeypatch):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as m

    real = m.calculate_dimensions
    monkeypatch.setattr(m, "calculate_dimensions", lambda area, ratio: real(48 * 48, ratio))  # 1024^2, shrunk
    qwen = tiny_qwen_edit_pipeline()
    img = test_image(24, 16)  # smaller than the (shrunk) trained area
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=5)
    up = DiffusersEditBackbone(qwen, num_inference_steps=2)
    out = up.run(up.prepare(EditRequest(img, "add a hat")), spec)
    w, h, _ = real(48 * 48, 24 / 16)
    m = qwen.vae_scale_factor * 2
    assert out.extra["resolution"] == {
        "policy": "upstream",
        "working": [w // m * m, h // m * m],
        "input": [24, 16],
    }
    assert w * h > 2 * 24 * 16  # generated above the input's size, as upstream does
    assert out.image.size == img.size  # resized back to the input
    plain = qwen(image=img, prompt="add a hat", negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(5)).images[0]  # fmt: skip
    diff = np.abs(np.asarray(out.image, np.int16) - np.asarray(plain.resize(img.size, 3), np.int16))
    assert diff.max() <= 1  # the adapter's size is the size upstream picks by itself
    small = DiffusersEditBackbone(qwen, num_inference_steps=2, resolution="input")
    assert small.run(EditRequest(img, "x"), spec).extra["resolution"]["working"] == [24, 16]
    with pytest.raises(InputError, match="resolution='upstream' is known for"):
        DiffusersEditBackbone(tiny_kontext_pipeline(), resolution="upstream")


# ---- ChronoEdit: VAE and image encoder in float32, as upstream loads them -------------------------
def test_chronoedit_loads_its_vae_and_image_encoder_in_float32():
    loaded = []

    class ChronoEditPipeline:  # stands in for diffusers' class: records what load_pipeline asks for
        @classmethod
        def from_pretrained(cls, model, torch_dtype=None):
            loaded.append(torch_dtype)
            return types.SimpleNamespace(to=lambda d: None, set_progress_bar_config=lambda **k: None)

    _diffusers.load_pipeline(ChronoEditPipeline, "m", device="cpu")
    assert loaded == [{"default": torch.bfloat16, "vae": torch.float32, "image_encoder": torch.float32}]
    assert _diffusers.component_dtypes("FluxKontextPipeline", torch.bfloat16) == torch.bfloat16


# ---- Step1X-Edit's repository route: dtype, version and mode forwarded ----------------------------
@pytest.fixture
def repo_dir(tmp_path):
    for name in ("step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors", "vae.safetensors"):
        (tmp_path / name).touch()
    return str(tmp_path)


def _install_generator(monkeypatch, cls):
    module = types.ModuleType("inference")
    module.ImageGenerator = cls
    monkeypatch.setitem(sys.modules, "inference", module)


def test_step1x_forwards_dtype_version_and_mode(monkeypatch, repo_dir):
    seen = {}

    class ImageGenerator:  # upstream v1.1's signature
        def __init__(self, dit_path=None, ae_path=None, qwen2vl_model_path=None, device="cuda", max_length=640,
                     dtype=torch.bfloat16, quantized=False, offload=False, lora=None, mode="flash", version="v1.0"):  # fmt: skip
            seen.update(dtype=dtype, mode=mode, version=version, dit=dit_path)

        def generate_image(self, *a, **k):
            raise AssertionError("not run here")

    _install_generator(monkeypatch, ImageGenerator)
    bb = load_backbone("step1x-edit", repo_dir, device="cpu", dtype="float16",
                       pipeline_kwargs={"route": "repo", "version": "v1.1"})  # fmt: skip
    assert bb.version == "v1.1" and seen["dit"].endswith("step1x-edit-v1p1-official.safetensors")
    assert seen["dtype"] == torch.float16 and seen["version"] == "v1.1"
    assert seen["mode"] == ("flash" if _has("flash_attn") else "torch")
    Step1XEditBackbone.from_pretrained(repo_dir, route="repo", mode="torch")
    assert seen["mode"] == "torch" and seen["dtype"] == torch.bfloat16
    with pytest.raises(InputError, match="mode must be one of flash, torch"):
        Step1XEditBackbone.from_pretrained(repo_dir, route="repo", mode="sdpa")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_step1x_refuses_what_an_old_image_generator_cannot_do(monkeypatch, repo_dir):
    class ImageGenerator:  # the first release: no dtype, version or mode
        def __init__(self, dit_path=None, ae_path=None, qwen2vl_model_path=None, device="cuda", quantized=False,
                     offload=False):  # fmt: skip
            pass

        def generate_image(self, *a, **k):
            raise AssertionError("not run here")

    _install_generator(monkeypatch, ImageGenerator)
    assert Step1XEditBackbone.from_pretrained(repo_dir, route="repo").version == "v1.0"
    with pytest.raises(InputError, match="needs an ImageGenerator that takes version="):
        Step1XEditBackbone.from_pretrained(repo_dir, route="repo", version="v1.1")
    with pytest.raises(InputError, match="--dtype float32 cannot be honoured"):
        Step1XEditBackbone.from_pretrained(repo_dir, route="repo", torch_dtype="float32")


@pytest.mark.skipif(_has("flash_attn"), reason="flash-attn is installed here")
def test_step1x_names_flash_attn_when_the_conditioner_hard_codes_it(monkeypatch, repo_dir, tmp_path):
    pkg = tmp_path / "checkout" / "modules"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "conditioner.py").write_text('ATTN = "flash_attention_2"\n')
    monkeypatch.syspath_prepend(str(tmp_path / "checkout"))
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)

    class ImageGenerator:
        def __init__(self, **kwargs):
            pass

        def generate_image(self, *a, **k):
            raise AssertionError("not run here")

    _install_generator(monkeypatch, ImageGenerator)
    try:
        with pytest.raises(BackboneUnavailableError, match="pip install flash-attn --no-build-isolation"):
            Step1XEditBackbone.from_pretrained(repo_dir, route="repo")
    finally:  # find_spec imported the stand-in package: drop it, so later tests do not see it
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]
