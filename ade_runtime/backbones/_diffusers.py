"""Shared mechanics of the diffusers adapters: lazy imports, call counting, pipeline loading, masks,
the preview decode.

The per-step callbacks (scheduler-step capture, x0 preview, mask, prune) are in ``step_callbacks.py``.
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
