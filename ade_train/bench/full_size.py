"""FLUX.1 Kontext and Qwen-Image-Edit at their published sizes, random weights, built in code.

``make gpu-check`` measures ADE's real-size code paths where weights cannot be fetched: every
component is built from its config directly on the device in bf16 (``torch.device`` +
default dtype, as ``from_pretrained`` does), so building takes seconds and downloads nothing.
``size="tiny"`` builds the same pipelines with tiny configs on the CPU (what CI runs).

Published sizes (the configs of the released checkpoints):

- FLUX.1 Kontext [dev] (black-forest-labs/FLUX.1-Kontext-dev ``transformer/config.json``): 19 double
  + 38 single blocks, 24 heads of 128 (3072 hidden), joint_attention_dim 4096, pooled 768, guidance
  embeddings; the FLUX VAE (``vae/config.json``: 128-256-512-512 channels, 2 layers per block, 16
  latent channels, scaling 0.3611, shift 0.1159, no quant convs); CLIP ViT-L/14 text (768 hidden, 12
  layers, 12 heads, 3072 MLP, 77 positions); T5 v1.1 XXL encoder (d_model 4096, 24 layers, d_ff 10240,
  64 heads of 64, gated-gelu, vocab 32128).
- Qwen-Image-Edit (Qwen/Qwen-Image-Edit): the 60-layer ``QwenImageTransformer2DModel`` and the
  ``AutoencoderKLQwenImage`` whose diffusers defaults are the published config; text encoder
  Qwen2.5-VL-7B-Instruct (``config.json``: 3584 hidden, 28 layers, 28 heads / 4 KV heads, 18944 MLP,
  vocab 152064, mrope sections 16-24-24; vision tower 32 blocks of 1280, 16 heads, out 3584).

Tokenizers are built in memory: FLUX's from ``tiny_flux``'s word vocabularies, Qwen's as a byte-level
BPE with the Qwen2.5-VL special tokens; ``QwenEditProcessor`` expands ``<|image_pad|>`` per image
grid as ``Qwen2VLProcessor`` does (its class check needs torchvision's video processor).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GIB = 2**30
SIZES = ("full", "tiny")

FLUX = {
    "full": {
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                    layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, vocab_size=49408),
        "t5": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False),
    },
    "tiny": {
        "transformer": dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                            guidance_embeds=True, axes_dims_rope=(4, 4, 8)),
        "vae": dict(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
                    norm_num_groups=1, sample_size=32, scaling_factor=1.5035, shift_factor=0.0609,
                    use_quant_conv=False, use_post_quant_conv=False),
        "clip": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=77, hidden_act="gelu", projection_dim=32, vocab_size=None),
        "t5": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=None,
                   relative_attention_num_buckets=8),
    },
}  # fmt: skip

QWEN = {
    "full": {
        "transformer": {},  # diffusers' defaults are Qwen-Image's published config (60 layers)
        "vae": {},
        "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=128000,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       fullatt_block_indexes=[7, 15, 23, 31], window_size=112, tokens_per_second=2),
    },
    "tiny": {
        "transformer": dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
                            num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 4, 4)),
        "vae": dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                    latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
        "text": dict(vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        "vision": dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                       fullatt_block_indexes=[1]),
    },
}  # fmt: skip
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")  # fmt: skip


def sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def build_on(device: Any, dtype: Any):
    """Modules constructed inside are allocated on ``device`` in ``dtype`` (no CPU copy, no cast)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def module_gib(module: Any) -> float:
    tensors = [*module.parameters(), *module.buffers()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / GIB, 3)


def _build(report: dict[str, Any], name: str, device: Any, dtype: Any, make) -> Any:
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with build_on(device, dtype):
        module = make()
    sync(device)
    report[name] = {"build_s": round(time.perf_counter() - t0, 3), "gib": module_gib(module)}
    return module.eval().requires_grad_(False)


def flux_kontext(size: str = "tiny", device: Any = "cpu", dtype: Any = None) -> tuple[Any, dict[str, Any]]:
    """A ``FluxKontextPipeline`` at ``size`` on ``device``; returns (pipe, {component: build_s, gib})."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from ade_train.bench.tiny_flux import _clip_tokenizer, _t5_tokenizer

    cfg = FLUX[size]
    dtype = dtype or torch.float32
    tok, tok2 = _clip_tokenizer(), _t5_tokenizer()
    clip_kw = {**cfg["clip"], "vocab_size": cfg["clip"]["vocab_size"] or len(tok)}
    t5_kw = {**cfg["t5"], "vocab_size": cfg["t5"]["vocab_size"] or len(tok2)}
    report: dict[str, Any] = {}
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformer = _build(
        report, "transformer", device, dtype, lambda: FluxTransformer2DModel(**cfg["transformer"])
    )
    vae = _build(report, "vae", device, dtype, lambda: AutoencoderKL(**cfg["vae"]))
    clip = _build(
        report, "text_encoder", device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**clip_kw, **ids))
    )
    t5_config = T5Config(**t5_kw, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    t5 = _build(report, "text_encoder_2", device, dtype, lambda: T5EncoderModel(t5_config))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip  (FLUX.1's scheduler_config.json)
    pipe = FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2,
        transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe, report


def qwen_tokenizer() -> Any:
    """Byte-level BPE (no merges: one token per byte) with Qwen2.5-VL's special tokens, in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(QWEN_SPECIAL))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")


class QwenEditProcessor:
    """What ``Qwen2VLProcessor(text=, images=, padding=True, return_tensors="pt")`` returns for the
    pipeline's prompt: pixel patches and grids from the image processor, each ``<|image_pad|>``
    expanded to ``prod(grid) / merge_size**2`` tokens (transformers' ``processing_qwen2_vl.py``)."""

    def __init__(self, tokenizer: Any, image_processor: Any):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def __call__(self, text, images=None, padding=True, return_tensors="pt"):
        from transformers import BatchFeature

        text = [text] if isinstance(text, str) else list(text)
        vision: dict[str, Any] = {}
        if images is not None:
            vision = dict(self.image_processor(images=images, return_tensors="pt"))
            merge = self.image_processor.merge_size**2
            grids = iter(vision["image_grid_thw"])
            out = []
            for t in text:
                while "<|image_pad|>" in t:
                    t = t.replace("<|image_pad|>", "<|placeholder|>" * int(next(grids).prod() // merge), 1)
                out.append(t.replace("<|placeholder|>", "<|image_pad|>"))
            text = out
        enc = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**dict(enc), **vision})


def qwen_image_edit(size: str = "tiny", device: Any = "cpu", dtype: Any = None) -> tuple[Any, dict[str, Any]]:
    """A ``QwenImageEditPipeline`` at ``size`` on ``device`` with a real Qwen2.5-VL text encoder."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = QWEN[size]
    dtype = dtype or torch.float32
    tok = qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = {**cfg["text"], "vocab_size": cfg["text"]["vocab_size"] or len(tok)}
    text.update(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    vl_config = Qwen2_5_VLConfig(
        text_config=text, vision_config=cfg["vision"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    report: dict[str, Any] = {}
    transformer = _build(
        report, "transformer", device, dtype, lambda: QwenImageTransformer2DModel(**cfg["transformer"])
    )
    vae = _build(report, "vae", device, dtype, lambda: AutoencoderKLQwenImage(**cfg["vae"]))
    encoder = _build(
        report, "text_encoder", device, dtype, lambda: Qwen2_5_VLForConditionalGeneration(vl_config)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )  # fmt: skip  (Qwen-Image-Edit's scheduler_config.json)
    processor = QwenEditProcessor(tok, Qwen2VLImageProcessorPil())
    pipe = QwenImageEditPipeline(
        scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok, processor=processor,
        transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe, report
