"""Backbone adapters behind one protocol (``base.Backbone``), loaded by name.

Each adapter lives in its own module and imports its library lazily, so the runtime core
installs without diffusers, BAGEL or Step1X-Edit. ``load_backbone`` is what the CLIs use.
"""

from __future__ import annotations

from typing import Any

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, Backbone, EditRequest
from ade_runtime.errors import InputError

DEFAULT_MODELS = {
    "flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "step1x-edit": "stepfun-ai/Step1X-Edit",
    "bagel": "ByteDance-Seed/BAGEL-7B-MoT",
}
BACKBONE_NAMES = ("testbed", "flux-kontext", "diffusers", "step1x-edit", "bagel")


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


# long function: one branch per backbone and its options, read top to bottom
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
    route's arguments). What was chosen is kept as ``backbone.options``.
    """
    if name not in BACKBONE_NAMES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    pk = dict(pipeline_kwargs or {})
    srm_cfg = _srm_config(srm)
    if srm_cfg is not None and name != "flux-kontext":
        raise InputError(f"--srm: the spatial reasoning mask is captured on flux-kontext only, not {name}")
    if name == "testbed":
        from ade_runtime.testbed import SyntheticBackbone

        _checked(name, pk, ())
        backbone: Any = SyntheticBackbone(backbone=model or "bagel", **kwargs)
        backbone.options = {"device": "cpu"}
        return backbone
    device = device or default_device()
    options: dict[str, Any] = {
        "device": device,
        "dtype": dtype or "bfloat16",
        "cpu_offload": bool(cpu_offload),
    }
    if name == "flux-kontext":
        from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

        kw = {**kwargs, **_checked(name, pk, KONTEXT_KWARGS), "srm": srm_cfg}
        backbone = FluxKontextBackbone.from_pretrained(
            model or DEFAULT_MODELS[name], device=device, torch_dtype=dtype, cpu_offload=cpu_offload, **kw
        )
    elif name == "diffusers":
        if not model:
            raise InputError(
                "--backbone diffusers needs --model (a diffusers image-edit pipeline id or path)"
            )
        from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone

        backbone = DiffusersEditBackbone.from_pretrained(
            model, device=device, torch_dtype=dtype, cpu_offload=cpu_offload, call_kwargs=pk, **kwargs
        )
    elif name == "step1x-edit":
        from ade_runtime.backbones.step1x import Step1XEditBackbone

        backbone = Step1XEditBackbone.from_pretrained(
            model or DEFAULT_MODELS[name],
            device=device,
            torch_dtype=dtype,
            offload=cpu_offload,
            **{**kwargs, **pk},
        )
    else:  # bagel: accelerate places it on the GPUs in bfloat16 (upstream app.py); no offload switch
        from ade_runtime.backbones.bagel import BagelBackbone

        if cpu_offload or dtype not in (None, "bfloat16"):
            raise InputError(
                "--backbone bagel loads in bfloat16 across the visible GPUs; drop --cpu-offload/--dtype"
            )
        _checked(name, pk, ())
        backbone = BagelBackbone.from_pretrained(model or DEFAULT_MODELS[name], device=device, **kwargs)
    options.update(srm=srm_cfg is not None, pipeline_kwargs=pk)
    backbone.options = options
    return backbone


__all__ = [
    "BACKBONE_NAMES",
    "AttemptOutput",
    "AttemptSpec",
    "Backbone",
    "EditRequest",
    "default_device",
    "load_backbone",
]
