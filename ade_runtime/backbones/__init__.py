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


def load_backbone(name: str, model: str | None = None, device: str = "cpu", **kwargs: Any) -> Backbone:
    """Build the adapter ``name`` with weights from ``model`` (a Hugging Face id or a local path).

    ``testbed`` is the synthetic edit world (CPU, no weights; ``model`` names the real
    backbone whose cost model it imitates, default bagel). ``diffusers`` wraps any diffusers
    image-edit pipeline that takes image + prompt (``model`` is required).
    """
    if name == "testbed":
        from ade_runtime.testbed import SyntheticBackbone

        return SyntheticBackbone(backbone=model or "bagel", **kwargs)
    if name == "flux-kontext":
        from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

        return FluxKontextBackbone.from_pretrained(model or DEFAULT_MODELS[name], device=device, **kwargs)
    if name == "diffusers":
        if not model:
            raise InputError(
                "--backbone diffusers needs --model (a diffusers image-edit pipeline id or path)"
            )
        from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone

        return DiffusersEditBackbone.from_pretrained(model, device=device, **kwargs)
    if name == "step1x-edit":
        from ade_runtime.backbones.step1x import Step1XEditBackbone

        return Step1XEditBackbone.from_pretrained(model or DEFAULT_MODELS[name], device=device, **kwargs)
    if name == "bagel":
        from ade_runtime.backbones.bagel import BagelBackbone

        return BagelBackbone.from_pretrained(model or DEFAULT_MODELS[name], device=device, **kwargs)
    raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")


__all__ = ["BACKBONE_NAMES", "AttemptOutput", "AttemptSpec", "Backbone", "EditRequest", "load_backbone"]
