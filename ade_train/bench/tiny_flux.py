"""Build a tiny, randomly initialised ``FluxKontextPipeline`` entirely in code (no downloads).

Sizes follow diffusers' own ``tests/pipelines/flux/test_pipeline_flux_kontext.py`` dummy
components (1 double + 1 single block, 2 heads of 16, a 1-level VAE with one latent channel),
with the tokenizers built in memory from a small word vocabulary instead of the hub's
``hf-internal-testing`` checkpoints. Other tests and the bench import ``tiny_kontext_pipeline``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "make the sky red blue green add a cat dog hat remove tree car replace with turn into "
    "photo painting style bright dark night day sun moon snow rain background person smile "
    "bad quality blurry more less big small left right top bottom of on in and"
).split()


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # Byte-level BPE with whole words as single tokens: every word of WORDS is one id, others fall to <unk>.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for w in WORDS:
        cur = w[0]
        for i, ch in enumerate(w[1:], start=1):
            nxt = ch + ("</w>" if i == len(w) - 1 else "")
            merges.append((cur, nxt))
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


def _t5_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


# long function: mostly the tiny configs of every pipeline component, literal
def tiny_kontext_pipeline(seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    """A tiny FluxKontextPipeline on CPU in float32 (vae_scale_factor 1, so sizes are multiples of 2)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    clip_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config)
    t5_config = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(t5_config)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    for module in (transformer, text_encoder, text_encoder_2, vae):
        module.eval()  # freshly built modules are in train mode (dropout); from_pretrained would set eval
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_image(width: int = 24, height: int = 16, seed: int = 0):
    """A deterministic RGB test image with some structure (gradients plus a square)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), np.full_like(x, 128)], -1)
    arr[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


test_image.__test__ = False  # not a pytest test despite the name


def _stub_text(width: int, tokens: int, prompt: str):
    """Deterministic stand-in prompt embeddings [1, tokens, width] keyed by the prompt text."""
    import torch

    g = torch.Generator().manual_seed(sum(map(ord, prompt or "")) + 7919 * len(prompt or ""))
    return torch.randn(1, tokens, width, generator=g)


def tiny_qwen_edit_pipeline(seed: int = 0):
    """A tiny ``QwenImageEditPipeline`` (real transformer, VAE, scheduler and true-CFG loop).

    Its Qwen2.5-VL prompt encoder needs a hub processor, so ``encode_prompt`` is replaced by a
    deterministic per-prompt embedding (16 wide, 7 tokens). Upstream conditions on the image at
    ~1024^2 whatever the output size; tests shrink that with
    ``monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", ...)``.
    """
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    pipe = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        processor=None, transformer=transformer,
    )  # fmt: skip

    def encode_prompt(prompt, image=None, device=None, num_images_per_prompt=1, **_):
        import torch

        return _stub_text(16, 7, prompt), torch.ones(1, 7, dtype=torch.long)

    pipe.encode_prompt = encode_prompt
    for module in (transformer, vae):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_chronoedit_pipeline(seed: int = 0):
    """A tiny ``ChronoEditPipeline`` (Wan-style image-to-video edit; returns ``frames``).

    Real transformer, Wan VAE and scheduler; the UMT5 prompt encoder and the CLIP image encoder
    need hub tokenizers, so ``encode_prompt`` / ``encode_image`` are deterministic stand-ins.
    """
    import torch
    from diffusers import (
        AutoencoderKLWan,
        ChronoEditPipeline,
        ChronoEditTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, image_dim=4, added_kv_proj_dim=24,
        rope_max_seq_len=32,
    )  # fmt: skip
    pipe = ChronoEditPipeline(
        tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None, transformer=transformer,
        vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )  # fmt: skip

    def encode_prompt(prompt, negative_prompt=None, do_classifier_free_guidance=True, **_):
        neg = _stub_text(16, 6, negative_prompt or "") if do_classifier_free_guidance else None
        return _stub_text(16, 6, prompt), neg

    pipe.encode_prompt = encode_prompt
    pipe.encode_image = lambda image, device=None: _stub_text(4, 5, "image")
    for module in (transformer, vae):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
