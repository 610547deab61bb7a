"""Cheap online scores of an attempt: CLIP-T (instruction adherence) and CLIP-I (faithfulness).

These are the signals the calibrated confidence reads for real backbones. Preprocessing is
pinned to the MagicBrush recipe (resize 256 bicubic, centre-crop 224, CLIP normalisation)
so numbers are comparable across papers; the score is the cosine similarity in [-1, 1]
(not multiplied by 100, nor clipped at 0 as in torchmetrics' CLIPScore). Captions longer
than CLIP's 77 tokens are truncated, and we say so once (torchmetrics #2883). The text
and source embeddings are computed once per request and reused for every attempt.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from ade_runtime.errors import BackboneUnavailableError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def magicbrush_preprocess(images: list[Image.Image], size: int = 224, resize: int = 256) -> torch.Tensor:
    """Resize the short side to ``resize`` (bicubic), centre-crop ``size``, normalise: [N, 3, size, size]."""
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        s = resize / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
        out.append(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def _pooled(x: Any) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features (torchmetrics #3407)."""
    if isinstance(x, torch.Tensor):
        return x
    for name in ("text_embeds", "image_embeds", "pooler_output"):
        v = getattr(x, name, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"cannot find pooled embeddings in {type(x).__name__}")


class ClipScorer:
    """``scorer(source, output, instruction) -> {"clip_t": ..., "clip_i": ...}`` with a CLIP model."""

    def __init__(self, model: Any, tokenizer: Any, image_size: int = 224, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.device = device
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._warned = False

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLIP, device: str = "cpu") -> ClipScorer:
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackboneUnavailableError(
                "CLIP scoring needs transformers: pip install 'ade-adaptive[diffusers]'"
            ) from exc
        model = CLIPModel.from_pretrained(name_or_path)
        tok = AutoTokenizer.from_pretrained(name_or_path)
        size = int(getattr(model.config.vision_config, "image_size", 224))
        return cls(model, tok, image_size=size, device=device)

    @torch.no_grad()
    def _text(self, text: str) -> torch.Tensor:
        key = ("t", hash(text))
        if key not in self._cache:
            max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
            ids = self.tokenizer([text], padding=True, truncation=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] > max_len and not self._warned:
                log.warning(
                    "instruction has %d tokens; CLIP reads %d, the rest is truncated", ids.shape[1], max_len
                )
                self._warned = True
            enc = self.tokenizer(
                [text], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            emb = _pooled(self.model.get_text_features(**enc))[0]
            self._cache[key] = emb / emb.norm()
        return self._cache[key]

    @torch.no_grad()
    def _image(self, image: Image.Image, cache: bool = False) -> torch.Tensor:
        key = ("i", hash(image.tobytes()))
        if cache and key in self._cache:
            return self._cache[key]
        px = magicbrush_preprocess([image], size=self.image_size, resize=round(self.image_size * 256 / 224))
        emb = _pooled(self.model.get_image_features(pixel_values=px.to(self.device)))[0]
        emb = emb / emb.norm()
        if cache:
            self._cache[key] = emb
        return emb

    def __call__(self, source: Image.Image, output: Image.Image, instruction: str) -> dict[str, float]:
        if len(self._cache) > 256:
            self._cache.clear()
        out = self._image(output)
        return {
            "clip_t": float(out @ self._text(instruction)),
            "clip_i": float(out @ self._image(source, cache=True)),
        }
