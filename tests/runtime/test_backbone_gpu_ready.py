"""Issue 15's adapter findings, each reproduced on a tiny pipeline built in code, and the GPU options.

Tiny pipelines: FLUX.1 Kontext, Qwen-Image-Edit and ChronoEdit (``ade_train/bench/tiny_flux.py``;
the Qwen2.5-VL / UMT5 / CLIP prompt encoders need hub tokenizers, so they are deterministic
stand-ins; transformers, VAEs, schedulers and the pipelines' own CFG loops are real).
"""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from ade_runtime.backbones import _diffusers, load_backbone, step_callbacks
from ade_runtime.backbones.bagel import SAME_DEVICE_MODULES, pin_same_device
from ade_runtime.backbones.base import AttemptSpec, EditRequest
from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone
from ade_runtime.backbones.flux_kontext import FluxKontextBackbone
from ade_runtime.backbones.srm import SRMConfig
from ade_runtime.backbones.step1x import Step1XEditBackbone
from ade_runtime.backbones.step_callbacks import SchedulerStepCapture, flow_x0
from ade_runtime.errors import InputError
from ade_train.bench.tiny_flux import (
    test_image,
    tiny_chronoedit_pipeline,
    tiny_kontext_pipeline,
    tiny_qwen_edit_pipeline,
)

KONTEXT = {"num_inference_steps": 4, "resolution": "input", "max_sequence_length": 32}


@pytest.fixture(scope="module")
def pipe():
    return tiny_kontext_pipeline()


def _kontext_schedule(steps: int = 28, tokens: int = 4096):
    """FLUX.1 Kontext's real schedule for a 1024^2 image (4096 packed tokens), as the pipeline sets it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return sched


# ---- 1. the x0 preview under bf16 ------------------------------------------------------------
def test_bf16_preview_x0_from_captured_velocity_matches_float64():
    sched = _kontext_schedule()
    g = torch.Generator().manual_seed(0)
    x0_true = 0.9 * torch.randn(1, 4096, 64, generator=g)
    noise = torch.randn(1, 4096, 64, generator=g)
    x = noise.to(torch.bfloat16)
    preview_step = 6
    with SchedulerStepCapture(sched) as cap:
        for t in sched.timesteps[:preview_step]:
            v = (noise - x0_true).to(torch.bfloat16)  # a bf16 transformer's output: the straight flow
            x_prev, x = x, sched.step(v, t, x, return_dict=False)[0]
    assert x.dtype == torch.bfloat16 and cap.steps == preview_step
    i = preview_step - 1
    sig = cap.sigmas
    ref = cap.sample.double() - sig[i] * cap.model_output.double()  # float64 reference from the same inputs
    ours = flow_x0(cap.sample, cap.model_output, sig[i])
    # The old estimate: velocity recovered from two bf16 latents divided by the small sigma step.
    v_old = (x.float() - x_prev.float()) / (sig[i + 1] - sig[i])
    old = x_prev.float() - sig[i] * v_old

    def rms(a):
        return float(a.double().pow(2).mean().sqrt())

    assert rms(ours - ref) < 1e-5
    assert rms(ours - x0_true) < 0.01  # only the bf16 rounding of x_t and v remains
    assert rms(old - ref) > 0.05 and rms(old - ref) > 20 * rms(ours - ref)  # the reproduced finding
    assert 0.8 < rms(x0_true) < 1.0


def test_sigmas_read_once_per_run(pipe, monkeypatch):
    calls = []
    real = step_callbacks.scheduler_sigmas
    monkeypatch.setattr(step_callbacks, "scheduler_sigmas", lambda s: calls.append(1) or real(s))
    bb = FluxKontextBackbone(pipe, **KONTEXT)
    img = test_image(16, 12)
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=1, preview_step=2, preview_fn=lambda im, k: True)
    bb.run(bb.prepare(EditRequest(img, spec.prompt)), spec)
    assert len(calls) == 1


# ---- 2. mask blending with a float32 VAE under a bf16 transformer -----------------------------
def test_mixed_dtype_mask_blend_keeps_pipeline_dtype():
    mixed = tiny_kontext_pipeline()
    for module in (mixed.transformer, mixed.text_encoder, mixed.text_encoder_2):
        module.to(torch.bfloat16)
    assert mixed.vae.dtype == torch.float32
    bb = FluxKontextBackbone(mixed, **KONTEXT)
    img = test_image(16, 12)
    mask = np.zeros((12, 16), np.float32)
    mask[:, 8:] = 1.0
    seen = []
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=2, mask=mask, preview_step=2,
                       preview_fn=lambda im, k: seen.append(im.size) or True)  # fmt: skip
    out = bb.run(bb.prepare(EditRequest(img, spec.prompt)), spec)
    assert out.image is not None and out.image.size == img.size and seen == [img.size]
    kept = np.asarray(out.image)[:, :8]
    assert np.array_equal(kept, np.asarray(img)[:, :8])  # outside the mask the source is kept


# ---- 3. ChronoEdit (a video edit pipeline returning frames) ------------------------------------
def test_chronoedit_runs_in_the_generic_adapter_and_returns_the_last_frame():
    chrono = tiny_chronoedit_pipeline()
    bb = DiffusersEditBackbone(chrono, num_inference_steps=2)
    assert not bb.supports_preview and "ChronoEdit" in bb.no_preview_reason
    img = test_image(32, 32)
    out = bb.run(bb.prepare(EditRequest(img, "add a hat")), AttemptSpec(0, 0, 0, "add a hat", seed=3))
    frames = chrono(
        image=img, prompt="add a hat", num_inference_steps=2, height=32, width=32, num_frames=5,
        generator=torch.Generator().manual_seed(3), output_type="pil",
    ).frames[0]  # fmt: skip
    assert out.image.size == img.size and np.array_equal(np.asarray(out.image), np.asarray(frames[-1]))
    with pytest.raises(InputError, match="cannot preview"):
        bb.run(EditRequest(img, "x"), AttemptSpec(0, 0, 0, "x", seed=0, preview_fn=lambda im, k: True))


# ---- 4. Qwen-Image-Edit: true CFG with a negative prompt, upstream's 50 steps -----------------
@pytest.fixture
def qwen(monkeypatch):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as m

    real = m.calculate_dimensions
    monkeypatch.setattr(m, "calculate_dimensions", lambda area, ratio: real(32 * 32, ratio))
    return tiny_qwen_edit_pipeline()


def test_qwen_image_edit_runs_true_cfg_by_default(qwen):
    assert DiffusersEditBackbone(qwen).num_inference_steps == 50
    bb = DiffusersEditBackbone(qwen, num_inference_steps=3)
    assert bb.call_kwargs["negative_prompt"] == " " and bb.call_kwargs["true_cfg_scale"] == 4.0
    assert bb.supports_preview
    img = test_image(32, 32)
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=5)
    out = bb.run(bb.prepare(EditRequest(img, spec.prompt)), spec)
    assert out.nfe == 6 and out.extra["transformer_calls"] == 6  # cond + uncond per step
    plain = qwen(
        image=img, prompt="add a hat", negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=3,
        height=32, width=32, generator=torch.Generator().manual_seed(5),
    ).images[0]  # fmt: skip
    diff = np.abs(np.asarray(out.image, np.int16) - np.asarray(plain, np.int16))
    assert diff.max() <= 1
    no_cfg = DiffusersEditBackbone(qwen, num_inference_steps=3, call_kwargs={"true_cfg_scale": 1.0})
    assert no_cfg.run(EditRequest(img, "x"), spec).nfe == 3
    pruned = bb.run(
        EditRequest(img, "x"),
        AttemptSpec(0, 0, 0, "x", seed=5, preview_step=1, preview_fn=lambda im, k: False),
    )
    assert pruned.pruned and pruned.nfe == 2 and pruned.preview_image.size == img.size
    with pytest.raises(InputError, match="takes no bogus"):
        DiffusersEditBackbone(qwen, call_kwargs={"bogus": 1})


# ---- 5. Step1X-Edit routes ---------------------------------------------------------------------
@pytest.fixture
def step1x_both_routes(monkeypatch):
    import diffusers

    loaded = []

    class Step1XEditPipeline:  # stands in for the diffusers class of PR #12249
        @staticmethod
        def from_pretrained(path, torch_dtype=None):
            loaded.append(path)
            return tiny_kontext_pipeline()

    class ImageGenerator:
        def __init__(self, **kwargs):
            loaded.append(kwargs)

        def generate_image(self, *a, **k):
            raise AssertionError("not run here")

    monkeypatch.setattr(diffusers, "Step1XEditPipeline", Step1XEditPipeline, raising=False)
    module = types.ModuleType("inference")
    module.ImageGenerator = ImageGenerator
    monkeypatch.setitem(sys.modules, "inference", module)
    return loaded


def test_step1x_diffusers_route_only_with_model_index(step1x_both_routes, tmp_path):
    loaded = step1x_both_routes
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors", "vae.safetensors"):
        (repo / name).touch()
    bb = Step1XEditBackbone.from_pretrained(str(repo), device="cpu", num_steps=8)  # auto: no model_index.json
    assert isinstance(bb, Step1XEditBackbone) and bb.num_steps == 8 and bb.version == "v1.0"
    v11 = Step1XEditBackbone.from_pretrained(str(repo), device="cpu", version="v1.1")
    assert loaded[-1]["dit_path"].endswith("step1x-edit-v1p1-official.safetensors") and v11.version == "v1.1"
    with pytest.raises(InputError, match="version must be one of v1.0, v1.1"):
        Step1XEditBackbone.from_pretrained(str(repo), version="v2")
    with pytest.raises(InputError, match="model_index.json"):
        Step1XEditBackbone.from_pretrained(str(repo), route="diffusers")
    (repo / "step1x-edit-v1p1-official.safetensors").unlink()
    with pytest.raises(InputError, match="v1p1-official"):
        Step1XEditBackbone.from_pretrained(str(repo), version="v1.1")
    layout = tmp_path / "diffusers"
    layout.mkdir()
    (layout / "model_index.json").write_text("{}")
    generic = Step1XEditBackbone.from_pretrained(str(layout), device="cpu", num_inference_steps=2)
    assert isinstance(generic, DiffusersEditBackbone) and generic.name == "step1x-edit"
    assert loaded[-1] == str(layout)
    with pytest.raises(InputError, match="num_steps belong to the repository route"):
        Step1XEditBackbone.from_pretrained(str(layout), device="cpu", num_steps=8)


# ---- 6. FLUX.2: no latent decoder, so no preview, said so -------------------------------------
def test_flux2_has_no_preview_and_says_why():
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    flux2 = diffusers.Flux2Pipeline.__new__(diffusers.Flux2Pipeline)
    flux2.__dict__.update(
        transformer=torch.nn.Linear(1, 1), scheduler=FlowMatchEulerDiscreteScheduler(), vae=None
    )
    bb = DiffusersEditBackbone(flux2)
    assert not bb.supports_preview and "FLUX.2" in bb.no_preview_reason


# ---- 7. smaller items ----------------------------------------------------------------------------
def test_bagel_device_map_pins_like_upstream():
    auto = {"language_model.model.embed_tokens": 1, "time_embedder": 0, "language_model": 0}
    one = pin_same_device(auto, 1)
    assert one["time_embedder"] == 1 and all(k in one for k in SAME_DEVICE_MODULES)
    assert one["vae2llm"] == "cuda:0"  # absent on one GPU: pinned to cuda:0 as upstream does
    many = pin_same_device(auto, 2)
    assert many["time_embedder"] == 1 and "vae2llm" not in many  # never add keys the map lacks
    assert auto == {"language_model.model.embed_tokens": 1, "time_embedder": 0, "language_model": 0}


def test_srm_does_not_compute_values(pipe):
    counts = {"v": 0}
    handles = [
        m.register_forward_hook(lambda *_: counts.__setitem__("v", counts["v"] + 1))
        for n, m in pipe.transformer.named_modules()
        if n.endswith(("to_v", "add_v_proj"))
    ]
    img = test_image(16, 12)
    spec = AttemptSpec(0, 0, 0, "add a hat", seed=1)
    try:
        plain = FluxKontextBackbone(pipe, **KONTEXT)
        plain.run(plain.prepare(EditRequest(img, spec.prompt)), spec)
        without = counts["v"]
        counts["v"] = 0
        srm = FluxKontextBackbone(pipe, srm=SRMConfig(steps=(0, 1)), **KONTEXT)
        out = srm.run(srm.prepare(EditRequest(img, spec.prompt)), spec)
    finally:
        for h in handles:
            h.remove()
    assert out.attention_mask is not None and out.extra["srm_maps"] > 0
    assert counts["v"] == without  # SRM's own projections skip V


def test_load_pipeline_offloads_instead_of_moving():
    events = []

    class Pipe:
        @classmethod
        def from_pretrained(cls, model, torch_dtype=None):
            events.append(("load", model, torch_dtype))
            return cls()

        def enable_model_cpu_offload(self, device=None):
            events.append(("offload", device))

        def to(self, device):
            events.append(("to", device))

        def set_progress_bar_config(self, **kw):
            pass

    _diffusers.load_pipeline(Pipe, "m", device="cuda", torch_dtype="float16", cpu_offload=True)
    _diffusers.load_pipeline(Pipe, "m", device="cpu", torch_dtype=None)
    assert events == [
        ("load", "m", torch.float16), ("offload", "cuda"), ("load", "m", torch.bfloat16), ("to", "cpu"),
    ]  # fmt: skip
    with pytest.raises(InputError, match="dtype 'fp8'"):
        _diffusers.load_pipeline(Pipe, "m", device="cpu", torch_dtype="fp8")


# ---- GPU options: Python API and CLIs -----------------------------------------------------------
@pytest.fixture(scope="module")
def saved_kontext(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-kontext")
    pipe.save_pretrained(d)
    return d


def test_load_backbone_gpu_options(saved_kontext, monkeypatch):
    import ade_runtime.backbones as backbones

    monkeypatch.setattr(backbones, "default_device", lambda: "cpu")
    kw = {"num_inference_steps": 3, "resolution": "input", "max_sequence_length": 32}
    bb = load_backbone("flux-kontext", str(saved_kontext), dtype="float32", srm=True, pipeline_kwargs=kw)
    assert bb.num_inference_steps == 3 and isinstance(bb.srm, SRMConfig)
    assert bb.pipe.transformer.dtype == torch.float32
    assert bb.options == {
        "device": "cpu", "dtype": "float32", "cpu_offload": False, "srm": True, "pipeline_kwargs": kw,
    }  # fmt: skip
    with pytest.raises(InputError, match="bogus not accepted by --backbone flux-kontext"):
        load_backbone("flux-kontext", str(saved_kontext), dtype="float32", pipeline_kwargs={"bogus": 1})
    with pytest.raises(InputError, match="flux-kontext only"):
        load_backbone("diffusers", str(saved_kontext), srm=True)
    generic = load_backbone(
        "diffusers",
        str(saved_kontext),
        device="cpu",
        dtype="float32",
        pipeline_kwargs={"guidance_scale": 3.0},
    )
    assert generic.call_kwargs["guidance_scale"] == 3.0 and generic.options["pipeline_kwargs"]


def test_device_defaults_to_cuda_when_available(monkeypatch, capsys):
    import argparse

    from ade_runtime.cli import _common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = argparse.Namespace(device=None)
    assert _common.resolve_device(args, "ade-edit") == "cuda"
    assert "ade-edit: --device not given, using cuda" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _common.resolve_device(argparse.Namespace(device=None), "x") == "cpu"
    assert _common.resolve_device(argparse.Namespace(device="cuda:1"), "x") == "cuda:1"


def test_ade_edit_help_shows_the_gpu_options(capsys):
    from ade_runtime.cli import edit

    with pytest.raises(SystemExit):
        edit.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--device", "--dtype", "--cpu-offload", "--srm", "--pipeline-kwargs", "cuda if available"):
        assert flag in out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from helpers.predictors import calibrator, card

    from ade_runtime.policy import PolicyConfig

    d = tmp_path_factory.mktemp("export")
    card(levels=(1, 2)).save_pretrained(d)
    calibrator(-1.0, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=1)).save_pretrained(d)
    return d


def test_ade_edit_records_the_backbone_options_in_the_trace(saved_kontext, export, tmp_path, capsys):
    from ade_runtime.cli import edit
    from ade_runtime.traces import TraceDataset

    src = tmp_path / "src.png"
    test_image(24, 16).save(src)
    kw = {"num_inference_steps": 2, "resolution": "input", "max_sequence_length": 32}
    base = ["--backbone", "flux-kontext", "--model", str(saved_kontext), "--predictors", str(export),
            "--image", str(src), "--instruction", "add a hat", "--out", str(tmp_path / "out.png"),
            "--scorer", "none", "--dtype", "float32", "--allow-fallback"]  # fmt: skip
    rc = edit.main([*base, "--pipeline-kwargs", json.dumps(kw), "--trace-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 0 and "--device not given, using" in err, err
    (rec,) = list(TraceDataset(tmp_path / "t", images="none"))
    opts = rec.meta["backbone_options"]
    assert opts["dtype"] == "float32" and opts["pipeline_kwargs"] == kw and opts["srm"] is False
    assert opts["device"] in ("cpu", "cuda") and opts["cpu_offload"] is False
    assert edit.main([*base, "--pipeline-kwargs", "{not json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--pipeline-kwargs is not valid JSON" in err.strip().splitlines()[-1]


def test_ade_collect_records_the_backbone_options(tmp_path, capsys):
    from ade_runtime.cli import collect
    from ade_runtime.testbed import World, save_png
    from ade_runtime.testbed.imageio import make_image
    from ade_runtime.traces import TraceDataset

    world = World(seed=11)
    r = world.sample_request(np.random.default_rng(0))
    save_png(make_image(r.source, r.source, world.size), tmp_path / "src.png")
    line = {"id": "q0", "image": "src.png", "instruction": r.instruction, "category": r.category}
    (tmp_path / "requests.jsonl").write_text(json.dumps(line) + "\n")
    args = ["--backbone", "testbed", "--requests", str(tmp_path / "requests.jsonl"), "--out", str(tmp_path / "o"),
            "--candidates", "1", "--rounds", "1"]  # fmt: skip
    assert collect.main(args) == 0
    assert "ade-collect: --device not given, using" in capsys.readouterr().err
    (rec,) = list(TraceDataset(tmp_path / "o", images="none"))
    assert rec.meta["backbone_options"] == {"device": "cpu"}
    assert collect.main([*args, "--pipeline-kwargs", '{"x": 1}']) == 2
    assert "x not accepted by --backbone testbed" in capsys.readouterr().err
