"""A generic ADE adapter for diffusers image-edit pipelines that take ``image`` + ``prompt``.

For pipelines such as ``QwenImageEditPipeline``, ``Flux2Pipeline`` or ``FluxKontextPipeline``
that support ``callback_on_step_end`` (diffusers ``pipelines/*/pipeline_*.py``). What it does
without pipeline-specific code: seeds a ``torch.Generator`` per attempt, counts real denoiser
calls with a forward hook (NFE), and prunes through the pipeline's ``interrupt`` flag after a
one-step x0 preview when the scheduler is flow matching (``x0 = x_t - sigma_t * v``).

Decoding is pipeline-specific, so the adapter decodes itself only through a known decoder
(``"flux"``: packed latents with ``scaling_factor``/``shift_factor``, ``"qwenimage"``: packed
latents with per-channel ``latents_mean``/``latents_std``) or a user-supplied
``decode_latents(pipe, latents, height, width) -> PIL``. With a decoder the pipeline runs with
``output_type="latent"`` and a pruned attempt skips the VAE decode; without one there is no
preview (``supports_preview = False``).

Resolution (``resolution=``): ``"upstream"`` reproduces the pipeline's own size rule where ADE knows
it (Qwen-Image-Edit: a 1024^2 area at the input's aspect ratio, ``calculate_dimensions``), so a small
input is not generated below the trained resolution; ``"input"`` keeps the input size within
``max_area``; ``"auto"`` (default) is ``"upstream"`` where known. The output is resized back to the
input size and ``extra["resolution"]`` states the size generated at. Under ``--cpu-offload`` the
preview decode keeps the transformer on the device (``offload_preview``, see ``_diffusers.vae_decode``).

Not reused across attempts: prompt embeddings (Qwen-Image-Edit's depend on the image, diffusers
#10705/#13377, so they are never shared across images). For FLUX.1 Kontext prefer
``FluxKontextBackbone``, which reuses embeddings and latents and confines masks in latent space;
here a mask is applied as a pixel composite only (``supports_mask = False``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from ade_runtime.backbones._diffusers import (
    OFFLOAD_PREVIEW,
    CallCounter,
    PipelineAdapter,
    check_mask,
    composite,
    decode_flux_packed,
    vae_decode,
)
from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.backbones.step_callbacks import SchedulerStepCapture, StepCallbacks, has_flow_sigmas
from ade_runtime.errors import InputError

DecodeFn = Callable[[Any, Any, int, int], Image.Image]


def decode_qwenimage_packed(
    pipe: Any, latents: Any, height: int, width: int, *, offload_preview: str = "keep"
) -> Image.Image:
    """Decode packed Qwen-Image latents exactly as QwenImageEditPipeline does."""
    import torch

    with torch.no_grad():
        x = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(pipe.vae.dtype)
        cfg = pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(x.device, x.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(x.device, x.dtype)
        img = vae_decode(pipe, x / inv_std + mean, offload_preview=offload_preview)[:, :, 0]
    return pipe.image_processor.postprocess(img, output_type="pil")[0]


# Upstream's recommended call arguments per pipeline class (model cards / pipeline docstrings), applied
# unless the caller overrides them: Qwen-Image-Edit runs true CFG only when a negative prompt is given.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "QwenImageEditPipeline": {"num_inference_steps": 50, "true_cfg_scale": 4.0, "negative_prompt": " "},
    "QwenImageEditPlusPipeline": {"num_inference_steps": 40, "true_cfg_scale": 4.0, "negative_prompt": " "},
    # Image-to-video edit models: the edit is the last frame (upstream examples save ``frames[0][-1]``).
    "ChronoEditPipeline": {"num_inference_steps": 50, "num_frames": 5},
}
NO_PREVIEW_REASONS = {
    "Flux2Pipeline": "FLUX.2's VAE latents are batch-normalised and patchified differently; no latent "
    "decoder is implemented for it, so it runs without preview and pruning",
    "ChronoEditPipeline": "ChronoEdit decodes video latents (Wan VAE); no latent decoder is implemented",
}


# Pipelines whose own size rule ADE reproduces (``resolution="upstream"``): Qwen-Image-Edit generates at
# ``calculate_dimensions(1024 * 1024, w / h)`` of its module (a 1024^2 area at the input's aspect ratio,
# sides rounded to 32), whatever the input size, unless height/width are passed.
UPSTREAM_AREA = {"QwenImageEditPipeline": 1024 * 1024, "QwenImageEditPlusPipeline": 1024 * 1024}
RESOLUTIONS = ("auto", "upstream", "input")


def upstream_size(pipe: Any, size: tuple[int, int]) -> tuple[int, int] | None:
    """The (W, H) the pipeline itself would generate at for an input of ``size``; None if unknown."""
    import sys

    area = UPSTREAM_AREA.get(type(pipe).__name__)
    rule = getattr(sys.modules.get(type(pipe).__module__), "calculate_dimensions", None)
    if area is None or rule is None:
        return None
    dims = rule(area, size[0] / size[1])  # looked up at call time: (w, h, _) or (w, h)
    m = pipe.vae_scale_factor * 2
    return int(dims[0]) // m * m, int(dims[1]) // m * m


def _auto_decoder(pipe: Any) -> DecodeFn | None:
    vae_cfg = getattr(getattr(pipe, "vae", None), "config", None)
    if vae_cfg is None or not hasattr(pipe, "_unpack_latents"):
        return None
    if "QwenImage" in type(pipe).__name__ and hasattr(vae_cfg, "latents_mean"):
        return decode_qwenimage_packed
    if type(pipe).__name__.startswith("Flux") and "Flux2" not in type(pipe).__name__:
        if (
            getattr(vae_cfg, "scaling_factor", None) is not None
            and getattr(vae_cfg, "shift_factor", None) is not None
        ):
            return decode_flux_packed
    return None


class DiffusersEditBackbone(PipelineAdapter):
    """Backbone protocol around any diffusers image + prompt editing pipeline (see module docstring)."""

    supports_mask = False
    supports_reasoning = False

    def __init__(
        self,
        pipe: Any,
        *,
        name: str = "diffusers-edit",
        num_inference_steps: int | None = None,
        call_kwargs: dict[str, Any] | None = None,
        decode_latents: DecodeFn | str | None = "auto",
        max_area: int = 1024**2,
        preview_step: int | None = None,
        resolution: str = "auto",
        offload_preview: str = "keep",
    ):
        if resolution not in RESOLUTIONS:
            raise InputError(
                f"DiffusersEditBackbone: resolution must be one of {RESOLUTIONS}, got {resolution!r}"
            )
        if offload_preview not in OFFLOAD_PREVIEW:
            raise InputError(
                f"DiffusersEditBackbone: offload_preview must be one of {OFFLOAD_PREVIEW}, got {offload_preview!r}"
            )
        known = type(pipe).__name__ in UPSTREAM_AREA
        if resolution == "upstream" and not known:
            raise InputError(
                f"DiffusersEditBackbone: resolution='upstream' is known for {', '.join(UPSTREAM_AREA)} only, "
                f"not {type(pipe).__name__}; use resolution='input'"
            )
        self.resolution = ("upstream" if known else "input") if resolution == "auto" else resolution
        self.offload_preview = offload_preview
        self.pipe = pipe
        self.name = name
        defaults = dict(PIPELINE_DEFAULTS.get(type(pipe).__name__, {}))
        self.num_inference_steps = int(
            num_inference_steps
            or (call_kwargs or {}).get("num_inference_steps")
            or defaults.get("num_inference_steps", 28)
        )
        defaults.pop("num_inference_steps", None)
        self.call_kwargs = {**defaults, **(call_kwargs or {})}
        self.call_kwargs.pop("num_inference_steps", None)
        self.max_area = int(max_area)
        # The step the loop previews at (it reads ``backbone.preview_step``); 6 of 28 by default.
        self.preview_step = (
            int(preview_step) if preview_step is not None else max(1, self.num_inference_steps * 6 // 28)
        )
        if not 1 <= self.preview_step <= self.num_inference_steps:
            raise InputError(
                f"DiffusersEditBackbone: preview_step must be in [1, num_inference_steps], got {preview_step}"
            )
        self.denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        if self.denoiser is None:
            raise InputError(
                f"DiffusersEditBackbone: {type(pipe).__name__} has neither .transformer nor .unet"
            )
        self._params = set(inspect.signature(type(pipe).__call__).parameters)
        if "callback_on_step_end" not in self._params or "image" not in self._params:
            raise InputError(
                f"DiffusersEditBackbone: {type(pipe).__name__}.__call__ must accept image= and "
                "callback_on_step_end=; use a pipeline-specific adapter for this model"
            )
        unknown = sorted(set(self.call_kwargs) - self._params)
        if unknown:
            raise InputError(
                f"DiffusersEditBackbone: {type(pipe).__name__}.__call__ takes no {', '.join(unknown)}; "
                "remove them from the pipeline keyword arguments"
            )
        self.decode = _auto_decoder(pipe) if decode_latents == "auto" else decode_latents
        if self.decode in (decode_flux_packed, decode_qwenimage_packed):
            self.decode = functools.partial(self.decode, offload_preview=offload_preview)
        can_interrupt = isinstance(getattr(type(pipe), "interrupt", None), property)
        self.supports_preview = bool(
            can_interrupt and has_flow_sigmas(pipe.scheduler) and self.decode is not None
        )
        self.no_preview_reason = None
        if not self.supports_preview:
            self.no_preview_reason = NO_PREVIEW_REASONS.get(
                type(pipe).__name__, "no flow-matching sigmas, interrupt flag or latent decoder"
            )

    @classmethod
    def adapter_kwargs(cls, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        # from_pretrained (any pipeline, its class read from model_index.json) names the backbone after it
        return {"name": type(pipe).__name__, **kwargs}

    def prepare(self, request: EditRequest) -> EditRequest:
        # Nothing is shared safely across pipelines generically (see module docstring).
        if not isinstance(request.image, Image.Image):
            raise InputError("DiffusersEditBackbone.prepare: request.image must be a PIL image")
        return request

    def _size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (W, H) the pipeline runs at: upstream's own rule, or the input size within ``max_area``."""
        if self.resolution == "upstream":
            return upstream_size(self.pipe, size)
        m = getattr(self.pipe, "vae_scale_factor", 8) * 2
        w, h = size
        if w * h > self.max_area:
            s = (self.max_area / (w * h)) ** 0.5
            w, h = int(w * s), int(h * s)
        return max(m, w // m * m), max(m, h // m * m)

    def _output_image(self, result: Any, height: int, width: int) -> Image.Image:
        """The edited image of one pipeline output: decoded latents, an image, or a video's last frame."""
        if self.decode is not None:
            return self.decode(self.pipe, result.images, height, width)
        images = getattr(result, "images", None)
        if images is None and getattr(result, "frames", None) is not None:
            images = result.frames[0]  # a video edit model: the edit is the last frame
            return images[-1]
        return images[0]

    def run(self, state: EditRequest, spec: AttemptSpec) -> AttemptOutput:
        import torch

        t0 = time.perf_counter()
        pipe = self.pipe
        source = spec.input_image if spec.input_image is not None else state.image
        steps = self.num_inference_steps
        pstep = spec.preview_step if spec.preview_step is not None else self.preview_step
        if spec.preview_fn is not None:
            if not self.supports_preview:
                raise InputError(
                    f"{self.name}: this pipeline cannot preview/prune ({self.no_preview_reason})"
                )
            if not 1 <= pstep <= steps:
                raise InputError(f"{self.name}: spec.preview_step must be in [1, {steps}], got {pstep}")
        mask = None if spec.mask is None else check_mask(spec.mask, source.size, self.name)
        w, h = self._size(source.size)
        kwargs: dict[str, Any] = {k: v for k, v in (("height", h), ("width", w)) if k in self._params}
        if "max_area" in self._params:
            kwargs["max_area"] = w * h
        kwargs.update(self.call_kwargs)
        height, width = kwargs.get("height", h), kwargs.get("width", w)

        def decode(p, x0):
            preview = self.decode(p, x0, height, width)
            return preview if preview.size == source.size else preview.resize(source.size, Image.BICUBIC)

        with (
            CallCounter(self.denoiser) as counter,
            SchedulerStepCapture(pipe.scheduler) as cap,
        ):
            callback = StepCallbacks.for_attempt(
                cap, preview_step=pstep, preview_fn=spec.preview_fn, decode=decode
            )
            result = pipe(
                image=source,
                prompt=spec.prompt,
                num_inference_steps=steps,
                generator=torch.Generator(device="cpu").manual_seed(int(spec.seed)),
                output_type="latent" if self.decode is not None else "pil",
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=callback.tensor_inputs,
                **kwargs,
            )
        extra: dict[str, Any] = {
            "resolution": {"policy": self.resolution, "working": [width, height], "input": list(source.size)},
            "decode_skipped": bool(callback.pruned and self.decode is not None),
            "preview_decodes": int(callback.preview_image is not None),
            "transformer_calls": counter.calls,
        }
        if callback.pruned:
            return AttemptOutput(
                image=None, nfe=counter.calls, latency_s=time.perf_counter() - t0, pruned=True,
                preview_image=callback.preview_image, extra=extra,
            )  # fmt: skip
        image = self._output_image(result, height, width)
        if image.size != source.size:
            image = image.resize(source.size, Image.BICUBIC)
        if mask is not None:
            image = composite(image, source, mask)
            extra["mask_mode"] = "pixel_composite"
        return AttemptOutput(
            image=image,
            nfe=counter.calls,
            latency_s=time.perf_counter() - t0,
            preview_image=callback.preview_image,
            extra=extra,
        )
