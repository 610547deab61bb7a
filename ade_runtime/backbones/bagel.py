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

# Bagel's modeling/bagel/qwen2_navit.py imports flash_attn unconditionally, and its requirements.txt pins
# torch==2.5.1 and transformers==4.49.0 (ADE's diffusers extra needs newer ones for FLUX.1 Kontext), so
# install it beside ADE without those pins, or in its own venv (docs/backbones.md, "Installing beside ADE").
INSTALL_HINT = (
    "BAGEL needs its repository on PYTHONPATH (module 'inferencer' with InterleaveInferencer) and "
    "flash-attn: git clone https://github.com/ByteDance-Seed/Bagel && export PYTHONPATH=$PWD/Bagel && "
    "pip install flash-attn --no-build-isolation && pip install einops decord pyarrow "
    "(not 'pip install -r Bagel/requirements.txt' into ADE's venv: it pins torch==2.5.1 and "
    "transformers==4.49.0; see docs/backbones.md)"
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


# These modules exchange tensors every step; upstream's app.py keeps them on one device.
SAME_DEVICE_MODULES = (
    "language_model.model.embed_tokens",
    "time_embedder",
    "latent_pos_embed",
    "vae2llm",
    "llm2vae",
    "connector",
    "vit_pos_embed",
)


def pin_same_device(device_map: dict[str, Any], n_gpus: int) -> dict[str, Any]:
    """Put ``SAME_DEVICE_MODULES`` on the device of the first one, as upstream ``app.py`` does.

    With several GPUs only the modules the inferred map already names are moved (a module absent
    from the map belongs to a parent entry, and adding a key for it would split that parent);
    with one GPU every module is pinned, to ``cuda:0`` when the map does not name it.
    """
    out = dict(device_map)
    if n_gpus <= 1:
        first = out.get(SAME_DEVICE_MODULES[0], "cuda:0")
        for k in SAME_DEVICE_MODULES:
            out[k] = first if k in out else "cuda:0"
    else:
        first = out.get(SAME_DEVICE_MODULES[0])
        for k in SAME_DEVICE_MODULES:
            if k in out:
                out[k] = first
    return out


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

    @classmethod
    def from_pretrained(
        cls,
        model: str = "ByteDance-Seed/BAGEL-7B-MoT",
        *,
        device: str | None = None,
        config: BagelConfig | None = None,
    ) -> BagelBackbone:
        """Load BAGEL-7B-MoT in bfloat16 the way the repository's ``app.py`` does (mode 1, GPUs).

        ``model`` is a local checkpoint directory or a Hub id (downloaded with ``snapshot_download``);
        ``device`` is accepted for the common loader and ignored: accelerate places the model on GPUs.
        """
        import os

        inferencer_cls = inferencer_class()
        try:
            import torch
            from accelerate import infer_auto_device_map, init_empty_weights, load_checkpoint_and_dispatch
            from data.data_utils import add_special_tokens
            from data.transforms import ImageTransform
            from modeling.autoencoder import load_ae
            from modeling.bagel import (
                Bagel,
                Qwen2Config,
                Qwen2ForCausalLM,
                SiglipVisionConfig,
                SiglipVisionModel,
            )
            from modeling.bagel import BagelConfig as UpstreamConfig
            from modeling.qwen2 import Qwen2Tokenizer
        except ImportError as exc:
            raise BackboneUnavailableError(f"{INSTALL_HINT} (missing: {exc.name})") from exc
        if not os.path.isdir(model):
            from huggingface_hub import snapshot_download

            model = snapshot_download(model)
        llm_config = Qwen2Config.from_json_file(os.path.join(model, "llm_config.json"))
        llm_config.qk_norm = True
        llm_config.tie_word_embeddings = False
        llm_config.layer_module = "Qwen2MoTDecoderLayer"
        vit_config = SiglipVisionConfig.from_json_file(os.path.join(model, "vit_config.json"))
        vit_config.rope = False
        vit_config.num_hidden_layers -= 1
        vae_model, vae_config = load_ae(local_path=os.path.join(model, "ae.safetensors"))
        upstream = UpstreamConfig(
            visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=vit_config, vae_config=vae_config,
            vit_max_num_patch_per_side=70, connector_act="gelu_pytorch_tanh", latent_patch_size=2, max_latent_size=64,
        )  # fmt: skip
        with init_empty_weights():
            net = Bagel(Qwen2ForCausalLM(llm_config), SiglipVisionModel(vit_config), upstream)
            net.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config, meta=True)
        tokenizer, new_token_ids, _ = add_special_tokens(Qwen2Tokenizer.from_pretrained(model))
        device_map = infer_auto_device_map(
            net,
            max_memory={i: "80GiB" for i in range(torch.cuda.device_count())},
            no_split_module_classes=["Bagel", "Qwen2MoTDecoderLayer"],
        )
        device_map = pin_same_device(device_map, torch.cuda.device_count())
        net = load_checkpoint_and_dispatch(
            net, checkpoint=os.path.join(model, "ema.safetensors"), device_map=device_map, offload_buffers=True,
            offload_folder="offload", dtype=torch.bfloat16, force_hooks=True,
        ).eval()  # fmt: skip
        inferencer = inferencer_cls(
            model=net, vae_model=vae_model, tokenizer=tokenizer, vae_transform=ImageTransform(1024, 512, 16),
            vit_transform=ImageTransform(980, 224, 14), new_token_ids=new_token_ids,
        )  # fmt: skip
        return cls(inferencer, config)

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
