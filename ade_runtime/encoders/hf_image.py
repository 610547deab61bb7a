"""Image features from frozen ViTs: DINOv2 (CLS + patch tokens) and CLIP vision (projected embedding).

Preprocessing is pinned and part of the fingerprint. DINOv2 follows the MagicBrush evaluation recipe
(OSU-NLP-Group/MagicBrush, evaluation/image_eval.py: Resize(256, bicubic) on the shorter side,
CenterCrop(224), ImageNet mean/std; DINO score = cosine of the ViT's CLS token). CLIP follows
``clip.load``'s own preprocess that MagicBrush's CLIP-I uses (Resize(224, bicubic), CenterCrop(224),
CLIP mean/std). Sizes are configurable for tiny test models. Implemented with PIL + numpy + torch
(no torchvision); transformers is imported lazily when a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ade_runtime.encoders.base import as_tensor, make_fingerprint
from ade_runtime.encoders.hf_text import config_identity, from_config_dict, load_pretrained, weights_identity
from ade_runtime.errors import InputError

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side to ``resize`` (bicubic), centre-crop ``crop``, normalise with ``normalization``."""

    resize: int = 256
    crop: int = 224
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        if not isinstance(self.crop, int) or self.crop < 1:
            raise InputError(f"ImagePreprocess: crop must be a positive int, got {self.crop!r}")
        if not isinstance(self.resize, int) or self.resize < self.crop:
            raise InputError(
                f"ImagePreprocess: resize must be an int >= crop ({self.crop}), got {self.resize!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise InputError(
                f"ImagePreprocess: normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}"
            )

    def spec(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "normalization": self.normalization,
            "resample": "bicubic",
        }

    def _one(self, img: Any, index: int) -> np.ndarray:
        if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] in (3, 4):
            img = Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
        if not isinstance(img, Image.Image):
            raise InputError(f"image {index} is {type(img).__name__}, expected a PIL image or an HxWx3 array")
        img = img.convert("RGB")
        w, h = img.size
        # torchvision.transforms.Resize(int): the shorter side becomes `resize`, aspect ratio kept
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        img = img.resize(size, Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(img, dtype=np.float32) / 255.0

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        """FloatTensor [N, 3, crop, crop], normalised."""
        if isinstance(images, Image.Image):
            raise InputError("image encoders take a list of images, got a single image; wrap it in [ ]")
        mean, std = (np.asarray(v, dtype=np.float32) for v in NORMALIZATIONS[self.normalization])
        x = np.stack([(self._one(im, i) - mean) / std for i, im in enumerate(images)])
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class _VitEncoder:
    """Shared loading, spec, fingerprint and batching of the two ViT encoders."""

    kind = ""
    model_class = ""
    default_normalization = "imagenet"

    def __init__(
        self,
        model: str | Mapping[str, Any] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        image_size: int = 224,
        resize_size: int | None = None,
        normalization: str | None = None,
        batch_size: int = 16,
    ) -> None:
        if (
            isinstance(model, Mapping) and config is None
        ):  # Encoder({"model_type": ...}) == Encoder(config=...)
            model, config = None, model
        if (model is None) == (config is None):
            raise InputError(
                f"{type(self).__name__}: give exactly one of model (id or path) and config (dict)"
            )
        self.model_ref = str(model) if model is not None else None
        self.config = dict(config) if config is not None else None
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.preprocess = ImagePreprocess(
            resize=resize_size if resize_size is not None else self._default_resize(image_size),
            crop=image_size,
            normalization=normalization or self.default_normalization,
        )
        if self.config is not None:
            self.model = from_config_dict(self._model_config(self.config), self.seed, self.model_class)
        else:
            self.model = load_pretrained(self.model_ref, self.model_class)
        self.model.eval().requires_grad_(False)
        self._fingerprint: str | None = None

    @staticmethod
    def _default_resize(image_size: int) -> int:
        return image_size

    def _model_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "image_size": self.preprocess.crop,
            "resize_size": self.preprocess.resize,
            "normalization": self.preprocess.normalization,
        }
        if self.model_ref is not None:
            out["model"] = self.model_ref
        else:
            out["config"] = self.config
            out["seed"] = self.seed
        return out

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = make_fingerprint(
                self.kind,
                {
                    "config": config_identity(self.model.config),
                    "weights": weights_identity(self.model_ref, self.model),
                    "preprocess": self.preprocess.spec(),
                },
            )
        return self._fingerprint

    def patch_grid(self, image_size: int | None = None) -> tuple[int, int]:
        """(h, w) of the patch-token grid for this encoder's (or the given) input size."""
        side = (image_size or self.preprocess.crop) // int(self._vision_config().patch_size)
        return (side, side)

    def _vision_config(self):
        return self.model.config

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _run(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(images, Image.Image):
            raise InputError(
                f"{type(self).__name__} takes a list of images, got a single image; wrap it in [ ]"
            )
        images = list(images)
        if not images:
            h, w = self.patch_grid()
            return torch.zeros(0, self.dim), torch.zeros(0, h * w, self.patch_dim)
        pooled, patches = [], []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size])
            with torch.no_grad():
                p, t = self._forward(pixels)
            pooled.append(p.float())
            patches.append(t.float())
        return torch.cat(pooled), torch.cat(patches)

    def encode(self, images: Sequence[Any]) -> torch.Tensor:
        """FloatTensor [N, dim]: the pooled embedding."""
        return self._run(images)[0]

    def encode_patches(self, images: Sequence[Any]) -> torch.Tensor:
        """FloatTensor [N, P, patch_dim]: patch tokens only (no CLS, no registers), row-major on patch_grid."""
        return self._run(images)[1]

    def encode_both(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [N, dim], patches [N, P, patch_dim]) from one forward pass."""
        return self._run(images)


class Dinov2Encoder(_VitEncoder):
    """DINOv2 (optionally with registers): ``encode`` = CLS token, ``encode_patches`` = patch tokens."""

    kind = "dinov2"
    model_class = ""  # AutoModel picks Dinov2Model / Dinov2WithRegistersModel from the config
    default_normalization = "imagenet"

    @staticmethod
    def _default_resize(image_size: int) -> int:
        return int(round(image_size * 256 / 224))  # 224 -> 256 as in MagicBrush

    def __init__(self, model: str | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        cfg = self.model.config
        self.prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.dim = self.patch_dim = int(cfg.hidden_size)

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = as_tensor(self.model(pixel_values=pixels), "last_hidden_state")
        return hidden[:, 0], hidden[:, self.prefix_tokens :]


class ClipVisionEncoder(_VitEncoder):
    """CLIP vision tower: ``encode`` = projected image embedding (get_image_features), patches = tokens 1:."""

    kind = "clip"
    model_class = "CLIPVisionModelWithProjection"
    default_normalization = "clip"

    def __init__(self, model: str | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        cfg = self.model.config
        self.dim = int(cfg.projection_dim)
        self.patch_dim = int(cfg.hidden_size)

    def _model_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if config.get("model_type") == "clip":  # a full CLIP config -> its vision part
            vision = {**config["vision_config"], "model_type": "clip_vision_model"}
            vision.setdefault("projection_dim", config.get("projection_dim", 512))
            return vision
        return config

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixels)
        return as_tensor(out, "image_embeds"), as_tensor(out, "last_hidden_state")[:, 1:]
