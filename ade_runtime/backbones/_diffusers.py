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
    """Counts real forward calls of a module and keeps a reference to the last call's input.

    Use as a context manager; the hooks are removed on exit. ``last_input`` is the tensor
    passed as ``input_kw`` (or the first positional argument): no copy is taken, the pipeline
    builds a fresh tensor per call (``torch.cat([latents, image_latents])``).
    """

    def __init__(self, module: Any, input_kw: str | None = "hidden_states"):
        self.module = module
        self.input_kw = input_kw
        self.calls = 0
        self.last_input = None
        self._handle = None

    def _pre_hook(self, module, args, kwargs):
        self.calls += 1
        if self.input_kw is not None:
            self.last_input = kwargs.get(self.input_kw, args[0] if args else None)

    def __enter__(self) -> CallCounter:
        self._handle = self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def flow_x0(x_t, x_next, sigma_t: float, sigma_next: float):
    """One-step x0 estimate of a flow-matching Euler step from x_t to x_next.

    The Euler step is ``x_next = x_t + (sigma_next - sigma_t) * v``, so ``v`` is recovered
    from the two latents (this includes any true-CFG combination the pipeline applied) and
    ``x0 = x_t - sigma_t * v``.
    """
    v = (x_next.float() - x_t.float()) / (sigma_next - sigma_t)
    return (x_t.float() - sigma_t * v).to(x_next.dtype)


def scheduler_sigmas(scheduler: Any) -> list[float] | None:
    """The flow-matching sigma schedule (length steps + 1) if the scheduler has one, else None."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        return None
    return [float(s) for s in sigmas]


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
