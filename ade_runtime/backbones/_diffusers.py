"""Shared mechanics of the diffusers adapters: lazy imports, call counting, x0 previews, masks.

Everything here attaches behaviour to a frozen pipeline from the outside (forward hooks,
``callback_on_step_end``), the way diffusers' ``hooks/first_block_cache.py`` does, so no
upstream pipeline is forked. The x0 preview follows the flow-matching identity
``x0 = x_t - sigma_t * v`` users compute by hand (diffusers #10606, mflux #726).
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

import numpy as np
from PIL import Image

from ade_runtime.errors import BackboneUnavailableError, InputError


def require(module: str, what: str, install: str) -> Any:
    """Import ``module`` or raise BackboneUnavailableError naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackboneUnavailableError(f"{what} needs the Python package {module!r}: {install}") from exc


def require_diffusers(what: str) -> Any:
    return require("diffusers", what, "pip install 'diffusers>=0.35' transformers accelerate")


class CallCounter:
    """Counts real forward calls of a module (the NFE); a context manager, the hook is removed on exit."""

    def __init__(self, module: Any):
        self.module = module
        self.calls = 0
        self._handle = None

    def _pre_hook(self, module, args, kwargs):
        self.calls += 1

    def __enter__(self) -> CallCounter:
        self._handle = self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


DTYPES = ("bfloat16", "float16", "float32")


def to_torch_dtype(dtype: Any) -> Any:
    """``"bfloat16"`` / ``"float16"`` / ``"float32"`` / a torch dtype / None (-> bfloat16) as a torch dtype."""
    import torch

    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_pipeline(
    pipeline_cls: Any, model: str, *, device: str | None, torch_dtype: Any = None, cpu_offload: bool = False
) -> Any:
    """``pipeline_cls.from_pretrained(model)`` in ``torch_dtype`` (bfloat16 by default), then either
    ``enable_model_cpu_offload`` (one component on the GPU at a time) or ``.to(device)``."""
    pipe = pipeline_cls.from_pretrained(model, torch_dtype=to_torch_dtype(torch_dtype))
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device if device not in (None, "cpu") else None)
    elif device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_x0(x_t, v, sigma_t: float):
    """Flow-matching x0 estimate ``x0 = x_t - sigma_t * v``, in float32.

    ``v`` is the velocity the scheduler stepped with (the transformer's output, combined for CFG
    exactly as the pipeline combined it), captured by ``SchedulerStepCapture``. Recovering ``v``
    from two consecutive latents instead divides a bf16 rounding error by the small step
    ``sigma_next - sigma_t`` (the scheduler casts each step back to the model dtype).
    """
    return x_t.float() - float(sigma_t) * v.float()


class SchedulerStepCapture:
    """Context manager: records the inputs of every ``scheduler.step`` call of one pipeline run.

    ``sample`` is x_t and ``model_output`` the velocity of the last step, both as the pipeline passed
    them (no copy); ``noise`` is the sample of step 0 (pure noise for a flow-matching pipeline);
    ``sigmas`` the schedule, read once per run on its first step, as Python floats. The wrapper is
    an instance attribute shadowing the scheduler's method, removed on exit.
    """

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.sample = None
        self.model_output = None
        self.noise = None
        self.sigmas: list[float] | None = None
        self.steps = 0
        self._previous: Any = None

    def _step(self, model_output, timestep, sample, *args, **kwargs):
        if self.steps == 0:
            self.noise = sample
            self.sigmas = scheduler_sigmas(self.scheduler)
        self.sample, self.model_output = sample, model_output
        self.steps += 1
        return self._original(model_output, timestep, sample, *args, **kwargs)

    def __enter__(self) -> SchedulerStepCapture:
        self._previous = vars(self.scheduler).get("step")
        self._original = self.scheduler.step
        self.scheduler.step = self._step
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            self.scheduler.step = self._previous
        else:
            vars(self.scheduler).pop("step", None)


def scheduler_sigmas(scheduler: Any) -> list[float] | None:
    """The flow-matching sigma schedule (length steps + 1) if the scheduler has one, else None."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        return None
    return [float(s) for s in sigmas]


class ADEStepCallback:
    """ADE's per-step work for a diffusers pipeline, shaped like diffusers' ``PipelineCallback``
    (``tensor_inputs`` + ``callback_fn(pipeline, step_index, timestep, callback_kwargs)``, passed as
    ``callback_on_step_end``); not a subclass, so the runtime imports without diffusers.

    - Mask confinement (``token_mask`` [1, N, 1] over packed tokens, ``source_latents`` packed):
      outside the mask the latents follow the source's own flow path ``(1 - s) * source + s * noise``
      at the current noise level. The blend runs in float32 and is cast back to the latents' dtype,
      so a float32 VAE under a bf16 transformer keeps the pipeline's dtype.
    - Preview after ``preview_step`` steps: x0 from the captured velocity (``flow_x0``), confined
      like the latents, decoded by ``decode(pipeline, x0) -> PIL`` and given to ``preview_fn``;
      False sets the pipeline's interrupt flag, so the remaining steps are skipped.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        capture: SchedulerStepCapture,
        *,
        preview_step: int | None = None,
        preview_fn: Any = None,
        decode: Any = None,
        token_mask: Any = None,
        source_latents: Any = None,
    ):
        self.capture = capture
        self.preview_step = preview_step
        self.preview_fn = preview_fn
        self.decode = decode
        self.token_mask = None if token_mask is None else token_mask.float()
        self.source_latents = None if source_latents is None else source_latents.float()
        self.preview = None
        self.pruned = False

    def _confine(self, x, sigma: float):
        """x inside the mask; outside it, the source's latents at noise level ``sigma`` (float32)."""
        m = self.token_mask.to(x.device)
        target = (1.0 - sigma) * self.source_latents.to(x.device) + sigma * self.capture.noise.float()
        return m * x.float() + (1.0 - m) * target

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        latents = callback_kwargs["latents"]
        cap = self.capture
        out: dict[str, Any] = {}
        if self.token_mask is not None:
            out["latents"] = self._confine(latents, cap.sigmas[step_index + 1]).to(latents.dtype)
        if self.preview_fn is not None and step_index + 1 == self.preview_step:
            x0 = flow_x0(cap.sample, cap.model_output, cap.sigmas[step_index])
            if self.token_mask is not None:
                x0 = self._confine(x0, 0.0)
            self.preview = self.decode(pipeline, x0)
            if not self.preview_fn(self.preview, self.preview_step):
                self.pruned = True
                pipeline._interrupt = True
        return out

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


def has_flow_sigmas(scheduler: Any) -> bool:
    """True for flow-matching schedulers, whose sigmas allow the x0 preview."""
    return (
        "FlowMatch" in type(scheduler).__name__
        or hasattr(scheduler, "sigmas")
        and hasattr(scheduler.config, "shift")
    )


def image_key(image: Image.Image) -> str:
    """Content hash of an image (mode, size, pixels): the key of per-request latent caches."""
    h = hashlib.sha1()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def check_mask(mask: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """Validate ``spec.mask`` against an image size (W, H); returns float32 H x W in [0, 1]."""
    arr = np.asarray(mask, dtype=np.float32)
    w, h = size
    if arr.ndim != 2 or arr.shape != (h, w):
        raise InputError(
            f"{where}: spec.mask has shape {arr.shape}, expected (H, W) = ({h}, {w}) of the input image; "
            "resize the mask to the image"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise InputError(f"{where}: spec.mask must hold finite values in [0, 1] (1 = may change)")
    return arr


def mask_to_tokens(mask: np.ndarray, grid: tuple[int, int]):
    """Pixel mask (H x W) -> packed-token mask [1, gh * gw, 1] by max over each token's pixels.

    A token may change when any of its pixels may change; the pixel-space composite then keeps
    the unmasked pixels exact. Row-major order matches diffusers' ``_pack_latents``.
    """
    import torch
    import torch.nn.functional as F

    gh, gw = grid
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.adaptive_max_pool2d(t, (gh, gw))
    return t.reshape(1, gh * gw, 1)


def composite(output: Image.Image, source: Image.Image, mask: np.ndarray) -> Image.Image:
    """Pixels where mask = 0 come from ``source``; soft masks blend linearly."""
    out = np.asarray(output.convert("RGB"), dtype=np.float32)
    src = np.asarray(source.convert("RGB").resize(output.size), dtype=np.float32)
    m = mask[..., None]
    mixed = out * m + src * (1.0 - m)
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB")


def decode_flux_packed(pipe: Any, latents: Any, height: int, width: int) -> Image.Image:
    """Decode packed FLUX-family latents exactly as FluxPipeline / FluxKontextPipeline do."""
    import torch

    with torch.no_grad():
        x = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        x = (x / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        img = pipe.vae.decode(x.to(pipe.vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(img, output_type="pil")[0]
