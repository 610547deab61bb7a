"""BAGEL behind ADE's Backbone protocol, through BAGEL's ``InterleaveInferencer``.

Follows ByteDance-Seed/Bagel ``inferencer.py`` (``InterleaveInferencer.__call__(image=, text=,
**hyper)``) and the README's editing hyper-parameters. ``spec.reasoning_tokens`` is BAGEL's thinking
budget: 0 -> ``think=False``, n > 0 -> ``think=True, max_think_token_n=n``; thinking does not help
easy edits (Bagel #11), which is what CARD's learned reasoning budget exploits. Defaults fix the
reported blur: ``cfg_renorm_min=0`` and the input resized to a longest side of 1024 (Bagel #4,
#11, #130). BAGEL has no batch inference (#196, #291) and no step callback, so candidates run one
per call, without preview or mask.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.errors import BackboneUnavailableError, InputError

INSTALL_HINT = (
    "BAGEL needs its repository on PYTHONPATH (module 'inferencer' with InterleaveInferencer): "
    "git clone https://github.com/ByteDance-Seed/Bagel && pip install -r Bagel/requirements.txt "
    "&& export PYTHONPATH=$PWD/Bagel"
)


def inferencer_class() -> Any:
    """BAGEL's ``InterleaveInferencer`` class, or BackboneUnavailableError naming the install."""
    try:
        module = importlib.import_module("inferencer")
        return module.InterleaveInferencer
    except (ImportError, AttributeError) as exc:
        raise BackboneUnavailableError(INSTALL_HINT) from exc


@dataclass
class BagelConfig:
    """Editing hyper-parameters passed to ``InterleaveInferencer`` (BAGEL README, editing section)."""

    cfg_text_scale: float = 4.0  # text guidance
    cfg_img_scale: float = 2.0  # image guidance
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # timesteps where CFG applies
    cfg_renorm_min: float = 0.0  # 0 avoids the washed-out edits of Bagel #4/#130
    cfg_renorm_type: str = "text_channel"  # the README's choice for editing
    num_timesteps: int = 50  # flow-matching steps
    timestep_shift: float = 3.0
    longest_side: int | None = 1024  # resize the input so its longest side is this (None = as is)
    do_sample: bool = False  # greedy thinking text
    text_temperature: float = 0.3

    def __post_init__(self) -> None:
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)  # type: ignore[assignment]
        lo, hi = self.cfg_interval
        if not (0.0 <= lo <= hi <= 1.0):
            raise InputError(
                f"BagelConfig.cfg_interval must satisfy 0 <= lo <= hi <= 1, got {self.cfg_interval}"
            )
        if self.num_timesteps < 2:
            raise InputError(f"BagelConfig.num_timesteps must be >= 2, got {self.num_timesteps}")
        if self.longest_side is not None and self.longest_side < 16:
            raise InputError(f"BagelConfig.longest_side must be >= 16 or None, got {self.longest_side}")
        if self.cfg_renorm_type not in ("global", "channel", "text_channel"):
            raise InputError(
                f"BagelConfig.cfg_renorm_type must be global|channel|text_channel, got {self.cfg_renorm_type!r}"
            )

    def modelled_nfe(self) -> int:
        """Denoiser passes: 1 per step plus one per active CFG branch on steps inside ``cfg_interval``."""
        t = np.linspace(1.0, 0.0, self.num_timesteps)
        t = self.timestep_shift * t / (1 + (self.timestep_shift - 1) * t)
        lo, hi = self.cfg_interval
        inside = int(np.sum((t[:-1] > lo) & (t[:-1] <= hi)))
        branches = int(self.cfg_text_scale > 1.0) + int(self.cfg_img_scale > 1.0)
        return (self.num_timesteps - 1) + inside * branches


class BagelBackbone:
    """ADE adapter around a ready ``InterleaveInferencer`` (build it as BAGEL's README shows)."""

    name = "bagel"
    supports_preview = False
    supports_mask = False
    supports_reasoning = True

    def __init__(self, inferencer: Any, config: BagelConfig | None = None):
        if not callable(inferencer):
            raise InputError("BagelBackbone: inferencer must be BAGEL's InterleaveInferencer instance")
        self.inferencer = inferencer
        self.config = config or BagelConfig()

    @classmethod
    def from_components(
        cls, *components: Any, config: BagelConfig | None = None, **named: Any
    ) -> BagelBackbone:
        """``InterleaveInferencer(model, vae_model, tokenizer, vae_transform, vit_transform, new_token_ids)``."""
        return cls(inferencer_class()(*components, **named), config)

    def _resize(self, image: Image.Image) -> Image.Image:
        side = self.config.longest_side
        if side is None or max(image.size) == side:
            return image
        s = side / max(image.size)
        return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BICUBIC)

    def prepare(self, request: EditRequest) -> EditRequest:
        # InterleaveInferencer rebuilds its KV context per call; there is nothing to cache outside it.
        if not isinstance(request.image, Image.Image):
            raise InputError("BagelBackbone.prepare: request.image must be a PIL image")
        return request

    def call_arguments(self, spec: AttemptSpec) -> dict[str, Any]:
        """The keyword arguments one attempt passes to ``InterleaveInferencer.__call__`` (besides image/text)."""
        if spec.reasoning_tokens < 0:
            raise InputError(
                f"BagelBackbone: spec.reasoning_tokens must be >= 0, got {spec.reasoning_tokens}"
            )
        c = self.config
        args = {
            "think": spec.reasoning_tokens > 0,
            "do_sample": c.do_sample,
            "text_temperature": c.text_temperature,
            "cfg_text_scale": c.cfg_text_scale,
            "cfg_img_scale": c.cfg_img_scale,
            "cfg_interval": list(c.cfg_interval),
            "timestep_shift": c.timestep_shift,
            "num_timesteps": c.num_timesteps,
            "cfg_renorm_min": c.cfg_renorm_min,
            "cfg_renorm_type": c.cfg_renorm_type,
        }
        if spec.reasoning_tokens > 0:
            args["max_think_token_n"] = int(spec.reasoning_tokens)
        return args

    def run(self, state: EditRequest, spec: AttemptSpec) -> AttemptOutput:
        if spec.preview_fn is not None or spec.mask is not None:
            raise InputError("BagelBackbone supports neither previews nor masks (supports_* are False)")
        import torch

        source = spec.input_image if spec.input_image is not None else state.image
        resized = self._resize(source.convert("RGB"))
        t0 = time.perf_counter()
        torch.manual_seed(int(spec.seed))  # BAGEL samples from the global RNG
        out = self.inferencer(image=resized, text=spec.prompt, **self.call_arguments(spec))
        image = out.get("image")
        if image is None:
            raise InputError(
                "BagelBackbone: InterleaveInferencer returned no image (check the model and inputs)"
            )
        if image.size != source.size:
            image = image.resize(source.size, Image.BICUBIC)
        extra = {
            "resolution": {"working": list(resized.size), "input": list(source.size)},
            "think_text": out.get("text"),
            "nfe_modelled": True,
        }
        return AttemptOutput(
            image=image, nfe=self.config.modelled_nfe(), latency_s=time.perf_counter() - t0, extra=extra
        )
