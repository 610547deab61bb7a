"""FLUX.1 Kontext behind ADE's Backbone protocol, wrapping diffusers' ``FluxKontextPipeline``.

Follows ``diffusers/pipelines/flux/pipeline_flux_kontext.py`` through its public arguments only:
prompt embeddings (``prompt_embeds``/``pooled_prompt_embeds``, and the negative pair when true CFG
is on, so CFG is never silently dropped, diffusers #13377) are encoded once per distinct prompt per
request; the source image latents once per request and passed as ``image`` (the pipeline accepts
latents there and skips its VAE encode); per-step work (x0 preview, pruning through the pipeline's
interrupt flag, mask confinement) goes through ``callback_on_step_end``; ``output_type="latent"``
lets a pruned attempt skip the VAE decode (diffusers #4165, #9619).

Resolution policy (Kontext otherwise resizes silently, diffusers #11886): ``"preferred"`` picks
Kontext's trained resolution closest in aspect ratio (``PREFERRED_KONTEXT_RESOLUTIONS``);
``"input"`` keeps the input size, scaled down to ``max_area`` if larger and floored to a multiple
of 16 pixels (VAE factor x 2x2 packing). The pipeline then runs at exactly that size and the output
is resized back to the input size; ``AttemptOutput.extra["resolution"]`` records both.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ade_runtime.backbones._diffusers import (
    OFFLOAD_PREVIEW,
    CallCounter,
    PipelineAdapter,
    check_mask,
    composite,
    decode_flux_packed,
    image_key,
    mask_to_tokens,
)
from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.backbones.srm import SRMCapture, SRMConfig, token_map_to_mask
from ade_runtime.backbones.step_callbacks import SchedulerStepCapture, StepCallbacks
from ade_runtime.errors import InputError

RESOLUTION_POLICIES = ("preferred", "input")


@dataclass
class KontextState:
    """Per-request cache: prompt embeddings by prompt text, image latents by image content."""

    request: EditRequest
    source_key: str
    working_size: tuple[int, int]  # (W, H) the pipeline runs at
    prompts: dict[str, tuple[Any, Any, int]] = field(
        default_factory=dict
    )  # text -> (embeds, pooled, n_tokens)
    latents: dict[str, Any] = field(default_factory=dict)  # image key -> unpacked, normalised latents
    encodes: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "image": 0})


class FluxKontextBackbone(PipelineAdapter):
    """ADE adapter for FLUX.1 Kontext (see the module docstring for what is reused and how)."""

    name = "flux-kontext"
    pipeline_class = "FluxKontextPipeline"  # from_pretrained: see _diffusers.PipelineAdapter
    default_model = "black-forest-labs/FLUX.1-Kontext-dev"
    supports_preview = True
    supports_mask = True
    supports_reasoning = False

    def __init__(
        self,
        pipe: Any,
        *,
        num_inference_steps: int = 28,
        guidance_scale: float = 2.5,
        resolution: str = "preferred",
        max_area: int = 1024**2,
        negative_prompt: str | None = None,
        true_cfg_scale: float = 1.0,
        max_sequence_length: int = 512,
        srm: SRMConfig | None = None,
        reuse_output_latents: bool = True,
        preview_step: int | None = None,
        name: str | None = None,
        offload_preview: str = "keep",
    ):
        if resolution not in RESOLUTION_POLICIES:
            raise InputError(
                f"FluxKontextBackbone: resolution must be one of {RESOLUTION_POLICIES}, got {resolution!r}"
            )
        if num_inference_steps < 1:
            raise InputError(
                f"FluxKontextBackbone: num_inference_steps must be >= 1, got {num_inference_steps}"
            )
        if true_cfg_scale > 1 and negative_prompt is None:
            raise InputError(
                "FluxKontextBackbone: true_cfg_scale > 1 needs a negative_prompt (CFG would be a no-op)"
            )
        if offload_preview not in OFFLOAD_PREVIEW:
            raise InputError(
                f"FluxKontextBackbone: offload_preview must be one of {OFFLOAD_PREVIEW}, got {offload_preview!r}"
            )
        self.offload_preview = offload_preview  # under --cpu-offload: see _diffusers.vae_decode
        self.pipe = pipe
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.resolution = resolution
        self.max_area = int(max_area)
        self.negative_prompt = negative_prompt
        self.true_cfg_scale = float(true_cfg_scale)
        self.max_sequence_length = int(max_sequence_length)
        self.srm = srm
        self.reuse_output_latents = reuse_output_latents
        if name is not None:
            self.name = name
        self.multiple_of = pipe.vae_scale_factor * 2
        # The step the loop previews at (it reads ``backbone.preview_step``); 6 of 28 by default.
        self.preview_step = (
            int(preview_step) if preview_step is not None else max(1, self.num_inference_steps * 6 // 28)
        )
        if not 1 <= self.preview_step <= self.num_inference_steps:
            raise InputError(
                f"FluxKontextBackbone: preview_step must be in [1, num_inference_steps], got {preview_step}"
            )

    @property
    def _cfg(self) -> bool:
        return self.true_cfg_scale > 1 and self.negative_prompt is not None

    # ---- resolution policy -------------------------------------------------------------------
    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (W, H) the pipeline runs at for an input of ``size`` under this adapter's policy."""
        w, h = size
        m = self.multiple_of
        if self.resolution == "preferred":
            from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

            _, w, h = min((abs(w / h - pw / ph), pw, ph) for pw, ph in PREFERRED_KONTEXT_RESOLUTIONS)
        elif w * h > self.max_area:
            scale = (self.max_area / (w * h)) ** 0.5
            w, h = int(w * scale), int(h * scale)
        w, h = w // m * m, h // m * m
        if w < m or h < m:
            raise InputError(f"FluxKontextBackbone: image {size} is smaller than {m} pixels on a side")
        return w, h

    # ---- encoding, once per request ----------------------------------------------------------
    def _encode_prompt(self, state: KontextState, text: str) -> tuple[Any, Any, int]:
        if text not in state.prompts:
            import torch

            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(
                    prompt=text,
                    prompt_2=None,
                    device=self.pipe._execution_device,
                    num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length,
                )
            ids = self.pipe.tokenizer_2(
                text, max_length=self.max_sequence_length, truncation=True, return_attention_mask=True
            )
            state.prompts[text] = (embeds, pooled, int(sum(ids["attention_mask"])))
            state.encodes["prompt"] += 1
        return state.prompts[text]

    def _encode_image(self, state: KontextState, image: Image.Image) -> Any:
        key = image_key(image)
        if key not in state.latents:
            import torch

            w, h = state.working_size
            proc = self.pipe.image_processor
            pixels = proc.preprocess(proc.resize(image.convert("RGB"), h, w), h, w)
            vae = self.pipe.vae
            with torch.no_grad():
                pixels = pixels.to(device=self.pipe._execution_device, dtype=vae.dtype)
                state.latents[key] = self.pipe._encode_vae_image(image=pixels, generator=None)
            state.encodes["image"] += 1
        return state.latents[key]

    def prepare(self, request: EditRequest) -> KontextState:
        if not isinstance(request.image, Image.Image):
            raise InputError("FluxKontextBackbone.prepare: request.image must be a PIL image")
        state = KontextState(request, image_key(request.image), self.working_size(request.image.size))
        self._encode_image(state, request.image)
        self._encode_prompt(state, request.instruction)
        if self._cfg:
            self._encode_prompt(state, self.negative_prompt)
        return state

    def _decode(self, latents: Any, size: tuple[int, int]) -> Image.Image:
        return decode_flux_packed(self.pipe, latents, size[1], size[0], offload_preview=self.offload_preview)

    # ---- one attempt -------------------------------------------------------------------------
    def _pipeline_kwargs(self, state: KontextState, spec: AttemptSpec, image_latents: Any) -> dict[str, Any]:
        """The pipeline's arguments for one attempt: cached embeddings and latents, exact size, latent output."""
        import torch

        embeds, pooled, _ = self._encode_prompt(state, spec.prompt)
        w, h = state.working_size
        kwargs: dict[str, Any] = dict(
            image=image_latents,
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            true_cfg_scale=self.true_cfg_scale,
            height=h,
            width=w,
            max_area=w * h,
            _auto_resize=False,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(int(spec.seed)),
            max_sequence_length=self.max_sequence_length,
            output_type="latent",
        )
        if self._cfg:
            neg, neg_pooled, _ = self._encode_prompt(state, self.negative_prompt)
            kwargs.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
        return kwargs

    def _srm_capture(self, n_tokens: int, grid: tuple[int, int]) -> SRMCapture:
        return SRMCapture(
            self.pipe.transformer,
            self.srm,
            text_tokens=n_tokens,
            query_tokens=grid[0] * grid[1],
            calls_per_step=2 if self._cfg else 1,
        )

    def _to_input_size(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return image if image.size == size else image.resize(size, Image.BICUBIC)

    def run(self, state: KontextState, spec: AttemptSpec) -> AttemptOutput:
        t0 = time.perf_counter()
        pipe = self.pipe
        source = spec.input_image if spec.input_image is not None else state.request.image
        in_size = source.size
        w, h = state.working_size
        pstep = spec.preview_step if spec.preview_step is not None else self.preview_step
        if spec.preview_fn is not None and not 1 <= pstep <= self.num_inference_steps:
            raise InputError(
                f"FluxKontextBackbone: spec.preview_step must be in [1, {self.num_inference_steps}], got {pstep}"
            )
        mask = None if spec.mask is None else check_mask(spec.mask, in_size, "FluxKontextBackbone")
        reused = image_key(source) in state.latents
        image_latents = self._encode_image(state, source)
        kwargs = self._pipeline_kwargs(state, spec, image_latents)
        grid = (h // self.multiple_of, w // self.multiple_of)
        packed_in = pipe._pack_latents(image_latents, 1, image_latents.shape[1], *image_latents.shape[2:])
        with ExitStack() as stack:
            counter = stack.enter_context(CallCounter(pipe.transformer))
            callback = StepCallbacks.for_attempt(
                stack.enter_context(SchedulerStepCapture(pipe.scheduler)),
                preview_step=pstep,
                preview_fn=spec.preview_fn,
                decode=lambda p, x0: self._to_input_size(self._decode(x0, (w, h)), in_size),
                token_mask=None if mask is None else mask_to_tokens(mask, grid).to(packed_in.device),
                source_latents=packed_in,
            )
            capture = None
            if self.srm is not None:
                capture = stack.enter_context(
                    self._srm_capture(self._encode_prompt(state, spec.prompt)[2], grid)
                )
            latents = pipe(
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=callback.tensor_inputs,
                **kwargs,
            ).images
        extra: dict[str, Any] = {
            "resolution": {"policy": self.resolution, "working": [w, h], "input": list(in_size)},
            "input_latents": "cached" if reused else "encoded",
            "transformer_calls": counter.calls,
            "preview_decodes": int(callback.preview_image is not None),
        }
        attention_mask = None
        if capture is not None and capture.token_scores() is not None:
            attention_mask, _ = token_map_to_mask(capture.token_scores()[0], grid, in_size, self.srm)
            extra["srm_maps"] = capture.captured
        image = None
        if not callback.pruned:
            image = self._to_input_size(self._decode(latents, (w, h)), in_size)
            if mask is not None:
                image = composite(image, source, mask)
            if self.reuse_output_latents:
                # A refinement round starting from this output skips decode -> encode.
                state.latents[image_key(image)] = pipe._unpack_latents(latents, h, w, pipe.vae_scale_factor)
        return AttemptOutput(
            image=image,
            nfe=counter.calls,
            latency_s=time.perf_counter() - t0,
            pruned=callback.pruned,
            preview_image=callback.preview_image,
            attention_mask=attention_mask,
            extra=extra,
        )
