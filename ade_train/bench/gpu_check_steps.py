"""The steps of ``make gpu-check`` (see ``gpu_check.py``): each takes the run's context and returns
(its JSON fields, whether its check passed). They go through ADE's adapters, never around them."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import numpy as np

from ade_train.bench.gpu_check import PROMPT, Plan, _r, image, peak_gib, probed, reset_peak


class Context:
    """What the steps share: the plan and the pipeline built by the last build step."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.flux: Any = None
        self.qwen: Any = None


def _dtype(plan: Plan) -> Any:
    import torch

    return torch.bfloat16 if plan.device.startswith("cuda") else torch.float32


def _size_name(plan: Plan) -> str:
    return "full" if plan.mode == "gpu-full" else "tiny"


def _kontext(ctx: Context, steps: int) -> Any:
    from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

    seq = 512 if ctx.plan.mode == "gpu-full" else 32
    return FluxKontextBackbone(
        ctx.flux,
        num_inference_steps=steps,
        resolution="input",
        max_area=ctx.plan.size**2,
        max_sequence_length=seq,
    )


def _spec(candidate: int, seed: int, **kw: Any) -> Any:
    from ade_runtime.backbones.base import AttemptSpec

    return AttemptSpec(candidate, 0, 0, PROMPT, seed=seed, **kw)


def _request(plan: Plan) -> Any:
    from ade_runtime.backbones.base import EditRequest

    return EditRequest(image(plan), PROMPT)


def _build(ctx: Context, make: Any) -> tuple[Any, dict[str, Any]]:
    """(pipeline, its build line): ``make(size, device, dtype)`` timed, the peak memory reset before."""
    plan = ctx.plan
    reset_peak(plan)
    t0 = time.perf_counter()
    pipe, report = make(_size_name(plan), plan.device, _dtype(plan))
    return pipe, {
        "components": report,
        "total_gib": _r(sum(c["gib"] for c in report.values())),
        "build_s": _r(time.perf_counter() - t0),
        "peak_gib": peak_gib(plan),
    }


def flux_build(ctx: Context) -> tuple[dict[str, Any], bool]:
    from ade_train.bench.full_size import flux_kontext

    ctx.flux, line = _build(ctx, flux_kontext)
    return line, True


def flux_attempt(ctx: Context) -> tuple[dict[str, Any], bool]:
    """One attempt at the full schedule: latency, peak memory, NFE, finite output latents."""
    import torch

    from ade_runtime.backbones._diffusers import image_key

    plan = ctx.plan
    bb = _kontext(ctx, plan.steps)
    reset_peak(plan)
    t0 = time.perf_counter()
    state = bb.prepare(_request(plan))
    prepare_s = time.perf_counter() - t0
    out = bb.run(state, _spec(0, seed=0))
    latents = state.latents[image_key(out.image)]
    finite = bool(torch.isfinite(latents).all())
    line = {
        "working_size": out.extra["resolution"]["working"], "steps": plan.steps, "nfe": out.nfe,
        "prepare_s": _r(prepare_s), "latency_s": _r(out.latency_s), "peak_gib": peak_gib(plan),
        "finite": finite, "image_std": _r(np.asarray(out.image, np.float32).std(), 2),
    }  # fmt: skip
    return line, finite and out.nfe == plan.steps


def srm(ctx: Context) -> tuple[dict[str, Any], bool]:
    """SRM over the default blocks and steps: maps captured, peak memory and time it adds."""
    from ade_runtime.backbones.srm import SRMConfig

    plan = ctx.plan
    bb = _kontext(ctx, plan.short_steps)
    state = bb.prepare(_request(plan))
    spec = _spec(0, seed=1)
    bb.run(state, spec)  # warm-up, so that neither timed run pays first-call costs
    reset_peak(plan)
    plain = bb.run(state, spec)
    plain_peak = peak_gib(plan)
    bb.srm = SRMConfig()
    reset_peak(plan)
    out = bb.run(state, spec)
    expected = len(ctx.flux.transformer.transformer_blocks) * len(bb.srm.steps)
    line = {
        "maps_captured": out.extra.get("srm_maps"), "expected_maps": expected, "steps": plan.short_steps,
        "plain_s": _r(plain.latency_s), "srm_s": _r(out.latency_s), "time_added_s": _r(out.latency_s - plain.latency_s),
        "peak_added_gib": None if plain_peak is None else _r(peak_gib(plan) - plain_peak),
        "mask_fraction": None if out.attention_mask is None else _r(out.attention_mask.mean()),
    }  # fmt: skip
    return line, out.extra.get("srm_maps") == expected and out.attention_mask is not None


def encode_once(ctx: Context, attempts: int = 4) -> tuple[dict[str, Any], bool]:
    """Encoder calls and seconds over ``attempts`` with one ``prepare`` vs one per attempt."""
    from ade_runtime.backbones._diffusers import CallCounter

    plan, pipe = ctx.plan, ctx.flux
    bb = _kontext(ctx, plan.short_steps)
    encoders = {"clip": pipe.text_encoder, "t5": pipe.text_encoder_2, "vae_encoder": pipe.vae.encoder}
    figures = {}
    for label, reuse in (("reused", True), ("reencoded", False)):
        with ExitStack() as stack:
            counters = {k: stack.enter_context(CallCounter(m)) for k, m in encoders.items()}
            t0 = time.perf_counter()
            state = bb.prepare(_request(plan)) if reuse else None
            for c in range(attempts):
                bb.run(state if reuse else bb.prepare(_request(plan)), _spec(c, seed=10 + c))
            figures[label] = {"calls": {k: c.calls for k, c in counters.items()},
                              "s_per_attempt": _r((time.perf_counter() - t0) / attempts)}  # fmt: skip
    saved = figures["reencoded"]["s_per_attempt"] - figures["reused"]["s_per_attempt"]
    ok = set(figures["reused"]["calls"].values()) == {1} and set(figures["reencoded"]["calls"].values()) == {
        attempts
    }
    return {"attempts": attempts, "steps": plan.short_steps, **figures, "saved_s_per_attempt": _r(saved)}, ok


def preview_prune(ctx: Context) -> tuple[dict[str, Any], bool]:
    """A kept candidate with a preview vs one pruned at it: NFE, seconds, the x0 preview's decode."""
    plan = ctx.plan
    bb = _kontext(ctx, plan.steps)
    state = bb.prepare(_request(plan))
    k = bb.preview_step
    with probed(bb, "_decode", plan) as probe:
        full = bb.run(state, _spec(0, seed=3, preview_step=k, preview_fn=lambda im, s: True))
        x0 = probe.calls[0]
        probe.calls.clear()
        pruned = bb.run(state, _spec(1, seed=4, preview_step=k, preview_fn=lambda im, s: False))
    line = {
        "preview_step": k, "steps": plan.steps,
        "full": {"nfe": full.nfe, "s": _r(full.latency_s)},
        "pruned": {"nfe": pruned.nfe, "s": _r(pruned.latency_s), "decodes": len(probe.calls)},
        "saved_s": _r(full.latency_s - pruned.latency_s), "x0_dtype": x0["dtype"], "x0_finite": x0["finite"],
        "preview_decode_ms": x0["ms"],
    }  # fmt: skip
    ok = pruned.pruned and pruned.image is None and pruned.nfe == k and full.nfe == plan.steps
    return line, ok and x0["finite"] and len(probe.calls) == 1


def parity(ctx: Context) -> tuple[dict[str, Any], bool]:
    """The adapter's image vs a plain ``pipe(...)`` call with the same seed and size."""
    import torch

    plan, pipe = ctx.plan, ctx.flux
    bb = _kontext(ctx, plan.short_steps)
    req = _request(plan)
    out = bb.run(bb.prepare(req), _spec(0, seed=5))
    w, h = bb.working_size(req.image.size)
    plain = pipe(
        image=req.image, prompt=PROMPT, height=h, width=w, max_area=w * h, _auto_resize=False,
        num_inference_steps=plan.short_steps, guidance_scale=bb.guidance_scale,
        max_sequence_length=bb.max_sequence_length, generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]  # fmt: skip
    a = np.asarray(out.image, np.int16)
    diff = int(np.abs(a - np.asarray(plain.resize(out.image.size), np.int16)).max())
    return {"max_abs_diff": diff, "tolerance": plan.parity_tolerance}, diff <= plan.parity_tolerance


def _hook_calls(module: Any) -> dict[str, int]:
    """Counts calls of ``module``'s accelerate hook ``pre_forward`` until the hook object is replaced."""
    hook = module._hf_hook
    counts = {"calls": 0}
    original = hook.pre_forward

    def pre_forward(*args, **kwargs):
        counts["calls"] += 1
        return original(*args, **kwargs)

    hook.pre_forward = pre_forward
    return counts


def offload(ctx: Context) -> tuple[dict[str, Any], bool]:
    """``enable_model_cpu_offload``: an attempt without previews, with previews kept beside the
    transformer (ADE's default) and with upstream's offload chain (the decode evicts the transformer)."""
    import accelerate  # noqa: F401  (diffusers' offload needs it; the error line names it)

    plan, pipe = ctx.plan, ctx.flux
    pipe.enable_model_cpu_offload(device=plan.device)
    try:
        bb = _kontext(ctx, plan.short_steps)
        state = bb.prepare(_request(plan))
        k = bb.preview_step
        runs: dict[str, Any] = {}
        for label, preview, mode in (("no_preview", False, "keep"), ("preview_keep", True, "keep"),
                                     ("preview_chain", True, "chain")):  # fmt: skip
            bb.offload_preview = mode
            seen: dict[str, str] = {}

            def fn(im, s, seen=seen):
                seen["device"] = str(next(pipe.transformer.parameters()).device)
                return True

            vae_calls = _hook_calls(pipe.vae)
            reset_peak(plan)
            out = bb.run(state, _spec(0, seed=6, preview_step=k, preview_fn=fn if preview else None))
            runs[label] = {"s": _r(out.latency_s), "peak_gib": peak_gib(plan), "nfe": out.nfe,
                           "transformer_device_at_preview": seen.get("device"),
                           "vae_hook_calls_in_loop": vae_calls["calls"]}  # fmt: skip
    finally:
        pipe.remove_all_hooks()
    keep, chain = runs["preview_keep"], runs["preview_chain"]
    line = {"steps": plan.short_steps, **runs, "reload_cost_s": _r(chain["s"] - keep["s"]),
            "preview_cost_s": _r(keep["s"] - runs["no_preview"]["s"])}  # fmt: skip
    ok = keep["vae_hook_calls_in_loop"] == 0 and chain["vae_hook_calls_in_loop"] >= 1
    if plan.device.startswith("cuda"):
        ok = ok and keep["transformer_device_at_preview"].startswith("cuda")
        ok = ok and chain["transformer_device_at_preview"] == "cpu"
    return line, ok


def qwen_build(ctx: Context) -> tuple[dict[str, Any], bool]:
    from ade_train.bench.full_size import qwen_image_edit

    ctx.qwen, line = _build(ctx, qwen_image_edit)
    return line, True


def qwen_cfg(ctx: Context) -> tuple[dict[str, Any], bool]:
    """Qwen-Image-Edit with true CFG (upstream's defaults): a full attempt and one pruned at its preview."""
    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone
    from ade_train.bench.tiny_flux import test_image

    plan = ctx.plan
    bb = DiffusersEditBackbone(ctx.qwen, num_inference_steps=plan.qwen_steps)
    src = test_image(plan.size // 2, plan.size * 3 // 8) if plan.mode == "gpu-full" else image(plan)
    req = EditRequest(src, PROMPT)
    k = bb.preview_step
    with probed(bb, "decode", plan) as probe:
        reset_peak(plan)
        full = bb.run(req, _spec(0, seed=0))
        full_peak, finite = peak_gib(plan), probe.calls[-1]["finite"]
        pruned = bb.run(req, _spec(1, seed=1, preview_step=k, preview_fn=lambda im, s: False))
    cfg = bb.call_kwargs.get("true_cfg_scale", 1.0) > 1 and bb.call_kwargs.get("negative_prompt") is not None
    calls = 2 if cfg else 1
    line = {
        "input_size": list(src.size), "resolution": full.extra["resolution"], "steps": plan.qwen_steps,
        "true_cfg_scale": bb.call_kwargs.get("true_cfg_scale"), "preview_step": k,
        "full": {"nfe": full.nfe, "s": _r(full.latency_s), "peak_gib": full_peak},
        "pruned": {"nfe": pruned.nfe, "s": _r(pruned.latency_s)}, "finite": finite,
    }  # fmt: skip
    ok = cfg and full.nfe == calls * plan.qwen_steps and pruned.pruned and pruned.nfe == calls * k
    return line, ok and finite


FLUX_STEPS = (flux_attempt, srm, encode_once, preview_prune, parity, offload)
QWEN_STEPS = (qwen_cfg,)
