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


# Components upstream keeps in float32 whatever the pipeline's dtype: ChronoEdit's model card loads the
# Wan VAE and the CLIP image encoder with ``torch_dtype=torch.float32`` beside a bf16 transformer.
FLOAT32_COMPONENTS: dict[str, tuple[str, ...]] = {"ChronoEditPipeline": ("vae", "image_encoder")}


def pipeline_class_name(pipeline_cls: Any, model: str) -> str:
    """The concrete pipeline class: ``pipeline_cls`` itself, or for ``DiffusionPipeline`` the
    ``_class_name`` of ``model``'s ``model_index.json`` (read from a local dir or the local cache)."""
    name = getattr(pipeline_cls, "__name__", str(pipeline_cls))
    if name != "DiffusionPipeline":
        return name
    try:
        return str(pipeline_cls.load_config(model).get("_class_name", name))
    except Exception:  # not resolvable offline: the generic name, and no per-class dtype rule
        return name


def component_dtypes(class_name: str, dtype: Any) -> Any:
    """``dtype`` for every component, or diffusers' per-component dict where upstream keeps some in float32."""
    import torch

    keep = FLOAT32_COMPONENTS.get(class_name)
    if not keep or dtype == torch.float32:
        return dtype
    return {"default": dtype, **dict.fromkeys(keep, torch.float32)}


def _local_dir(model: str) -> str | None:
    """``model`` as a local directory: itself, or its snapshot in the local Hub cache (no network)."""
    import os

    if os.path.isdir(model):
        return model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=True)
    except Exception:  # not cached, or no huggingface_hub: weights are counted after loading instead
        return None


def load_pipeline(
    pipeline_cls: Any,
    model: str,
    *,
    device: str | None,
    torch_dtype: Any = None,
    cpu_offload: bool = False,
    free_bytes: int | None = None,
) -> Any:
    """``pipeline_cls.from_pretrained(model)`` in ``torch_dtype`` (bfloat16 by default; float32 for the
    components upstream keeps there, ``FLOAT32_COMPONENTS``), then ``enable_model_cpu_offload`` (one
    component on the device at a time) or ``.to(device)``.

    On a CUDA device (or when ``free_bytes`` is given) the weights are checked against the free memory
    first (``memory.check_fits``): from the safetensors headers before loading when the model is a local
    directory or cached, else from the loaded modules before they move; a pipeline that cannot fit is
    refused with the GiB needed and free and the fix (``--cpu-offload``).
    """
    from ade_runtime.backbones.memory import check_fits, disk_component_bytes, free_device_bytes

    dtype = component_dtypes(pipeline_class_name(pipeline_cls, model), to_torch_dtype(torch_dtype))
    free = free_bytes if free_bytes is not None else free_device_bytes(device)
    fit = dict(device=device, what=f"{model}", cpu_offload=cpu_offload, free_bytes=free)
    checked = False
    if free is not None:
        local = _local_dir(model)
        on_disk = disk_component_bytes(local, dtype) if local else None
        if on_disk:
            check_fits(on_disk, **fit)
            checked = True
    pipe = pipeline_cls.from_pretrained(model, torch_dtype=dtype)
    if free is not None and not checked:
        from ade_runtime.backbones.memory import module_component_bytes

        check_fits(module_component_bytes(pipe), **fit)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    elif device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PipelineAdapter:
    """``from_pretrained`` of an adapter built as ``cls(pipe, **kwargs)`` around one diffusers pipeline."""

    # the diffusers class to load; DiffusionPipeline loads the class its model_index.json names
    pipeline_class = "DiffusionPipeline"
    default_model: str | None = None  # what from_pretrained loads when given no model

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device: str | None = None,
        torch_dtype: Any = None,
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load the pipeline from the Hub or a local directory (``load_pipeline``: bfloat16 by default,
        checked against the free memory, offloaded or moved to ``device``) and wrap it."""
        model = model if model is not None else cls.default_model
        if model is None:
            raise InputError(f"{cls.__name__}.from_pretrained: give a model id or a local directory")
        diffusers = require_diffusers(cls.__name__)
        pipe = load_pipeline(
            getattr(diffusers, cls.pipeline_class),
            model,
            device=device,
            torch_dtype=torch_dtype,
            cpu_offload=cpu_offload,
        )
        return cls(pipe, **cls.adapter_kwargs(pipe, kwargs))

    @classmethod
    def adapter_kwargs(cls, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments ``from_pretrained`` passes on to ``cls(pipe, ...)``."""
        return kwargs


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


def stop_pipeline(pipeline: Any) -> None:
    """Skip the remaining denoising steps of ``pipeline``'s current call."""
    # diffusers has no public setter: its loops read the read-only ``interrupt`` property backed by
    # ``_interrupt``, the flag its docs set from a callback ("Interrupt the diffusion process")
    pipeline._interrupt = True


# One callback per behaviour, shaped like diffusers' ``PipelineCallback`` (``tensor_inputs`` +
# ``callback_fn(pipeline, step_index, timestep, callback_kwargs) -> callback_kwargs``); not subclasses,
# so the runtime imports without diffusers. ``StepCallbacks`` runs them in order.


class MaskCallback:
    """Mask confinement (``token_mask`` [1, N, 1] over packed tokens, ``source_latents`` packed):
    outside the mask the latents follow the source's own flow path ``(1 - s) * source + s * noise``
    at the current noise level. The blend runs in float32 and is cast back to the latents' dtype, so
    a float32 VAE under a bf16 transformer keeps the pipeline's dtype."""

    tensor_inputs = ["latents"]

    def __init__(self, capture: SchedulerStepCapture, token_mask: Any, source_latents: Any):
        self.capture = capture
        self.token_mask = token_mask.float()
        self.source_latents = source_latents.float()

    def confine(self, x, sigma: float):
        """x inside the mask; outside it, the source's latents at noise level ``sigma`` (float32)."""
        m = self.token_mask.to(x.device)
        target = (1.0 - sigma) * self.source_latents.to(x.device) + sigma * self.capture.noise.float()
        return m * x.float() + (1.0 - m) * target

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        latents = callback_kwargs["latents"]
        sigma = self.capture.sigmas[step_index + 1]
        callback_kwargs["latents"] = self.confine(latents, sigma).to(latents.dtype)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class PreviewCallback:
    """The preview after ``preview_step`` steps: x0 from the captured velocity (``flow_x0``), confined
    like the latents when there is a ``mask``, decoded by ``decode(pipeline, x0) -> PIL`` into ``image``."""

    tensor_inputs: list[str] = []  # reads the scheduler step's inputs from the capture

    def __init__(
        self, capture: SchedulerStepCapture, preview_step: int, decode: Any, mask: MaskCallback | None = None
    ):
        self.capture = capture
        self.preview_step = preview_step
        self.decode = decode
        self.mask = mask
        self.image = None

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        if step_index + 1 == self.preview_step:
            cap = self.capture
            x0 = flow_x0(cap.sample, cap.model_output, cap.sigmas[step_index])
            if self.mask is not None:
                x0 = self.mask.confine(x0, 0.0)
            self.image = self.decode(pipeline, x0)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class PruneCallback:
    """At the preview step, ``preview_fn(preview image, step)``; False prunes the attempt: the pipeline
    stops (``stop_pipeline``), so the remaining steps are skipped."""

    tensor_inputs: list[str] = []

    def __init__(self, preview: PreviewCallback, preview_fn: Any):
        self.preview = preview
        self.preview_fn = preview_fn
        self.pruned = False

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        step = self.preview.preview_step
        if step_index + 1 == step and not self.preview_fn(self.preview.image, step):
            self.pruned = True
            stop_pipeline(pipeline)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class StepCallbacks:
    """ADE's callbacks of one pipeline call, passed as ``callback_on_step_end``: mask, then preview,
    then prune, each given the previous one's ``callback_kwargs``, as diffusers'
    ``MultiPipelineCallbacks`` runs its list; ``preview_image`` and ``pruned`` read the outcome back."""

    def __init__(
        self,
        mask: MaskCallback | None = None,
        preview: PreviewCallback | None = None,
        prune: PruneCallback | None = None,
    ):
        self.mask, self.preview, self.prune = mask, preview, prune
        self.callbacks = [c for c in (mask, preview, prune) if c is not None]

    @classmethod
    def for_attempt(
        cls,
        capture: SchedulerStepCapture,
        *,
        preview_step: int | None = None,
        preview_fn: Any = None,
        decode: Any = None,
        token_mask: Any = None,
        source_latents: Any = None,
    ) -> StepCallbacks:
        """The callbacks one attempt needs: the mask with a ``token_mask``, preview and prune with a
        ``preview_fn``."""
        mask = None if token_mask is None else MaskCallback(capture, token_mask, source_latents)
        if preview_fn is None:
            return cls(mask)
        preview = PreviewCallback(capture, preview_step, decode, mask)
        return cls(mask, preview, PruneCallback(preview, preview_fn))

    @property
    def tensor_inputs(self) -> list[str]:
        return list(dict.fromkeys(name for c in self.callbacks for name in c.tensor_inputs))

    @property
    def preview_image(self) -> Any:
        return None if self.preview is None else self.preview.image

    @property
    def pruned(self) -> bool:
        return self.prune is not None and self.prune.pruned

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        for callback in self.callbacks:
            callback_kwargs = callback(pipeline, step_index, timestep, callback_kwargs)
        return callback_kwargs


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


OFFLOAD_PREVIEW = ("keep", "chain")


def offloaded(module: Any) -> bool:
    """True when accelerate's offload hook is attached (``enable_model_cpu_offload``)."""
    return hasattr(getattr(module, "_hf_hook", None), "pre_forward")


def vae_decode(pipe: Any, z: Any, *, offload_preview: str = "keep") -> Any:
    """``pipe.vae.decode(z)[0]``, without evicting the transformer under model CPU offload.

    Under ``enable_model_cpu_offload`` diffusers' ``apply_forward_hook`` makes ``vae.decode`` run the
    VAE's accelerate hook, which offloads the previous model of the chain (the transformer) to the CPU;
    during the denoising loop the next step then moves it back (about 24 GB for FLUX.1's bf16 weights).
    With ``offload_preview="keep"`` the VAE alone is moved to the execution device, decoded through
    the undecorated method (``__wrapped__``) and moved back: the transformer stays, and the decode's
    activations sit beside it (peak memory = transformer + VAE decode). ``"chain"`` keeps upstream's
    behaviour (lower peak, one transformer reload per preview). Without offload both are one decode.
    """
    vae = pipe.vae
    if offload_preview not in OFFLOAD_PREVIEW:
        raise InputError(f"offload_preview must be one of {OFFLOAD_PREVIEW}, got {offload_preview!r}")
    if offload_preview == "chain" or not offloaded(vae):
        return vae.decode(z, return_dict=False)[0]
    device = pipe._execution_device
    home = next(vae.parameters()).device
    raw = getattr(type(vae).decode, "__wrapped__", type(vae).decode)
    vae.to(device)
    try:
        return raw(vae, z.to(device), return_dict=False)[0]
    finally:
        vae.to(home)


def decode_flux_packed(
    pipe: Any, latents: Any, height: int, width: int, *, offload_preview: str = "keep"
) -> Image.Image:
    """Decode packed FLUX-family latents exactly as FluxPipeline / FluxKontextPipeline do."""
    import torch

    with torch.no_grad():
        x = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        x = (x / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        img = vae_decode(pipe, x.to(pipe.vae.dtype), offload_preview=offload_preview)
    return pipe.image_processor.postprocess(img, output_type="pil")[0]
