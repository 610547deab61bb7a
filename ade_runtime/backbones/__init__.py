"""Backbone adapters behind one protocol (``base.Backbone``), loaded by name.

Each adapter lives in its own module and imports its library lazily, so the runtime core
installs without diffusers, BAGEL or Step1X-Edit. ``load_backbone`` is what the CLIs use: it looks the
name up in ``BACKBONE_LOADERS``, a table filled by ``register_backbone`` (peft's ``register_peft_method``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, Backbone, EditRequest
from ade_runtime.errors import InputError

DEFAULT_MODELS = {
    "flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "step1x-edit": "stepfun-ai/Step1X-Edit",
    "bagel": "ByteDance-Seed/BAGEL-7B-MoT",
}


def default_device() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _srm_config(srm: Any) -> Any:
    if srm is None or srm is False:
        return None
    from ade_runtime.backbones.srm import SRMConfig

    return SRMConfig() if srm is True else srm


# Adapter arguments that ``pipeline_kwargs`` may set, per backbone (diffusers: any __call__ argument).
KONTEXT_KWARGS = (
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "true_cfg_scale",
    "max_sequence_length",
    "resolution",
    "max_area",
    "preview_step",
    "offload_preview",
)


def _checked(name: str, pipeline_kwargs: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(pipeline_kwargs) - set(allowed))
    if unknown:
        raise InputError(
            f"--pipeline-kwargs: {', '.join(unknown)} not accepted by --backbone {name}; "
            f"use {', '.join(allowed) if allowed else 'none'}"
        )
    return dict(pipeline_kwargs)


BackboneLoader = Callable[..., Backbone]

# name -> loader(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs), in the order
# the CLIs list them; ``register_backbone`` adds one (as peft's ``register_peft_method`` adds a method)
BACKBONE_LOADERS: dict[str, BackboneLoader] = {}


def register_backbone(name: str) -> Callable[[BackboneLoader], BackboneLoader]:
    """Decorator: ``loader`` builds the backbone ``name`` for ``load_backbone``. It receives the
    model, the device (None: its choice), ``dtype``, ``cpu_offload``, ``srm`` (None or an
    ``SRMConfig``), ``pipeline_kwargs`` (a dict) and the adapter's own keyword arguments, and sets
    ``backbone.options`` (``gpu_options`` does that for an adapter on a torch device)."""

    def register(loader: BackboneLoader) -> BackboneLoader:
        if name in BACKBONE_LOADERS:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONE_LOADERS[name] = loader
        return loader

    return register


def gpu_options(build: BackboneLoader) -> BackboneLoader:
    """Wrap the loader of a backbone on a torch device: the device defaults to cuda when available,
    and ``backbone.options`` records device, dtype, offload, SRM and the pipeline arguments."""

    @functools.wraps(build)
    def loader(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
        device = device or default_device()
        options: dict[str, Any] = {
            "device": device,
            "dtype": dtype or "bfloat16",
            "cpu_offload": bool(cpu_offload),
        }
        backbone = build(
            model,
            device,
            dtype=dtype,
            cpu_offload=cpu_offload,
            srm=srm,
            pipeline_kwargs=pipeline_kwargs,
            **kwargs,
        )
        options.update(srm=srm is not None, pipeline_kwargs=pipeline_kwargs)
        backbone.options = options
        return backbone

    return loader


@register_backbone("testbed")
def _testbed(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
    from ade_runtime.testbed import SyntheticBackbone

    _checked("testbed", pipeline_kwargs, ())
    backbone: Any = SyntheticBackbone(backbone=model or "bagel", **kwargs)
    backbone.options = {"device": "cpu"}
    return backbone


@register_backbone("flux-kontext")
@gpu_options
def _flux_kontext(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
    from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

    kw = {**kwargs, **_checked("flux-kontext", pipeline_kwargs, KONTEXT_KWARGS), "srm": srm}
    return FluxKontextBackbone.from_pretrained(
        model or DEFAULT_MODELS["flux-kontext"],
        device=device,
        torch_dtype=dtype,
        cpu_offload=cpu_offload,
        **kw,
    )


@register_backbone("diffusers")
@gpu_options
def _diffusers(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
    if not model:
        raise InputError("--backbone diffusers needs --model (a diffusers image-edit pipeline id or path)")
    from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone

    return DiffusersEditBackbone.from_pretrained(
        model,
        device=device,
        torch_dtype=dtype,
        cpu_offload=cpu_offload,
        call_kwargs=pipeline_kwargs,
        **kwargs,
    )


@register_backbone("step1x-edit")
@gpu_options
def _step1x_edit(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
    from ade_runtime.backbones.step1x import Step1XEditBackbone

    return Step1XEditBackbone.from_pretrained(
        model or DEFAULT_MODELS["step1x-edit"],
        device=device,
        torch_dtype=dtype,
        offload=cpu_offload,
        **{**kwargs, **pipeline_kwargs},
    )


@register_backbone("bagel")
@gpu_options
def _bagel(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
    """accelerate places BAGEL on the GPUs in bfloat16 (upstream app.py); no offload switch."""
    from ade_runtime.backbones.bagel import BagelBackbone

    if cpu_offload or dtype not in (None, "bfloat16"):
        raise InputError(
            "--backbone bagel loads in bfloat16 across the visible GPUs; drop --cpu-offload/--dtype"
        )
    _checked("bagel", pipeline_kwargs, ())
    return BagelBackbone.from_pretrained(model or DEFAULT_MODELS["bagel"], device=device, **kwargs)


BACKBONE_NAMES = tuple(BACKBONE_LOADERS)  # the built-in backbones, as the CLIs list them


def load_backbone(
    name: str,
    model: str | None = None,
    device: str | None = None,
    *,
    dtype: str | None = None,
    cpu_offload: bool = False,
    srm: Any = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Backbone:
    """Build the adapter ``name`` with weights from ``model`` (a Hugging Face id or a local path).

    ``testbed`` is the synthetic edit world (CPU, no weights; ``model`` names the real
    backbone whose cost model it imitates, default bagel). ``diffusers`` wraps any diffusers
    image-edit pipeline that takes image + prompt (``model`` is required).

    GPU options: ``device`` (default: cuda when available, else cpu), ``dtype`` (bfloat16,
    float16, float32; default bfloat16), ``cpu_offload`` (diffusers' model CPU offload; Step1X's
    ``offload``), ``srm`` (True or an ``SRMConfig``: capture the spatial reasoning mask; FLUX.1
    Kontext only) and ``pipeline_kwargs`` (flux-kontext: its adapter's sampling arguments;
    diffusers: extra ``pipe(...)`` arguments such as ``negative_prompt``; step1x-edit: its
    route's arguments). What was chosen is kept as ``backbone.options``. The names are the
    registered ones (``register_backbone``).
    """
    loader = BACKBONE_LOADERS.get(name)
    if loader is None:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_LOADERS)}")
    srm_cfg = _srm_config(srm)
    if srm_cfg is not None and name != "flux-kontext":
        raise InputError(f"--srm: the spatial reasoning mask is captured on flux-kontext only, not {name}")
    return loader(
        model,
        device,
        dtype=dtype,
        cpu_offload=cpu_offload,
        srm=srm_cfg,
        pipeline_kwargs=dict(pipeline_kwargs or {}),
        **kwargs,
    )


__all__ = [
    "BACKBONE_LOADERS",
    "BACKBONE_NAMES",
    "AttemptOutput",
    "AttemptSpec",
    "Backbone",
    "EditRequest",
    "default_device",
    "load_backbone",
    "register_backbone",
]
