"""Request features for CARD: the same vector at training and at run time.

A request (instruction + source image) becomes ``concat(text_encoder(instruction),
image_encoder(image))`` -- the pooled features of the encoders in ``ade_runtime.encoders``. The
featurizer's spec is stored in the exported artifact (``feature_spec``), so the runtime rebuilds
exactly the encoders training used and ``CardPredictor.from_pretrained`` checks their fingerprints
(CARD, "complexity-adaptive reasoning budget": the budget is a function of the request only).

Public API::

    fz = RequestFeaturizer(build_text_encoder({"kind": "hashing", "dim": 512}),
                           build_image_encoder({"kind": "pixels"}))        # image encoder optional
    fz.dim, fz.fingerprints, fz.spec(), RequestFeaturizer.from_spec(fz.spec())
    x = fz.featurize(["make the mug blue"], [pil_image])                   # FloatTensor[N, fz.dim]
    x = fz.featurize(instructions, images, cache=FeatureCache(dir), image_keys=[...])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.images import open_rgb

SPEC_VERSION = 1
ROLES = ("text", "image")


def _load_image(image: Any) -> Any:
    """A PIL image in RGB from a PIL image or a path."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(
                f"source image {path} does not exist; pass an existing PNG/JPEG/WebP or a PIL image"
            )
        try:
            return open_rgb(path)
        except OSError as exc:
            raise InputError(f"source image {path} cannot be decoded ({exc}); pass a PNG/JPEG/WebP") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    raise InputError(f"image must be a PIL image or a path, got {type(image).__name__}")


def _image_key(image: Any) -> str:
    """Content key of an image: the sha256 of its file bytes, or of its pixels for a PIL image."""
    from ade_runtime.encoders.cache import content_key

    if isinstance(image, (str, os.PathLike)):
        try:
            return content_key(Path(image).read_bytes())
        except OSError as exc:
            raise InputError(
                f"source image {image} cannot be read ({exc}); pass an existing image file"
            ) from None
    return content_key(_load_image(image))


class RequestFeaturizer:
    """Turns (instruction, source image) pairs into CARD's input vectors."""

    def __init__(self, text_encoder: Any, image_encoder: Any | None = None) -> None:
        for role, enc in (("text", text_encoder), ("image", image_encoder)):
            if enc is None and role == "text":
                raise InputError(
                    "RequestFeaturizer needs a text encoder (build_text_encoder({'kind': 'hashing'}))"
                )
            if enc is not None and not all(hasattr(enc, a) for a in ("dim", "fingerprint", "spec", "encode")):
                raise InputError(f"{role} encoder {type(enc).__name__} lacks dim/fingerprint/spec/encode")
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder

    @property
    def dim(self) -> int:
        return int(self.text_encoder.dim) + (
            int(self.image_encoder.dim) if self.image_encoder is not None else 0
        )

    @property
    def encoders(self) -> dict[str, Any]:
        """Role -> encoder, in feature order."""
        out = {"text": self.text_encoder}
        if self.image_encoder is not None:
            out["image"] = self.image_encoder
        return out

    @property
    def fingerprints(self) -> dict[str, str]:
        """Role -> encoder fingerprint; an artifact trained on other fingerprints refuses to load."""
        return {role: str(enc.fingerprint) for role, enc in self.encoders.items()}

    def spec(self) -> dict[str, Any]:
        """JSON spec: ``{"version", "dim", "encoders": {role: {"fingerprint", "spec"}}}``."""
        return {
            "version": SPEC_VERSION,
            "dim": self.dim,
            "encoders": {
                role: {"fingerprint": str(enc.fingerprint), "spec": enc.spec()}
                for role, enc in self.encoders.items()
            },
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = "feature_spec") -> RequestFeaturizer:
        """Rebuild the encoders a spec names and check they are the ones it was made with."""
        from ade_runtime.encoders import build_image_encoder, build_text_encoder

        if not isinstance(spec, Mapping) or not isinstance(spec.get("encoders"), Mapping):
            raise ArtifactError(f"{where}: missing key 'encoders'; re-export the predictor")
        encoders = spec["encoders"]
        if "text" not in encoders:
            raise ArtifactError(f"{where}: missing key 'encoders.text'; re-export the predictor")
        unknown = sorted(set(encoders) - set(ROLES))
        if unknown:
            raise ArtifactError(f"{where}: unknown encoder roles {unknown}; this runtime knows {list(ROLES)}")
        built = {}
        for role, builder in (("text", build_text_encoder), ("image", build_image_encoder)):
            entry = encoders.get(role)
            if entry is None:
                continue
            if not isinstance(entry, Mapping) or "spec" not in entry:
                raise ArtifactError(f"{where}: missing key 'encoders.{role}.spec'; re-export the predictor")
            enc = builder(dict(entry["spec"]))
            want = entry.get("fingerprint")
            if want is not None and str(enc.fingerprint) != str(want):
                raise ArtifactError(
                    f"{where}: encoder mismatch: encoders.{role} rebuilt from its spec has fingerprint "
                    f"{enc.fingerprint}, the predictor was trained with {want}; install the same encoder "
                    "weights or retrain"
                )
            built[role] = enc
        fz = cls(built["text"], built.get("image"))
        if "dim" in spec and int(spec["dim"]) != fz.dim:
            raise ArtifactError(f"{where}: dim is {spec['dim']} but the rebuilt encoders give {fz.dim}")
        return fz

    def _encode(
        self, encoder: Any, items: Sequence[Any], keys: Sequence[str] | None, cache: Any, prepare=lambda v: v
    ) -> torch.Tensor:
        if cache is None or keys is None:
            out = encoder.encode([prepare(v) for v in items])
        else:
            # decode lazily: only cache misses are loaded and encoded
            out = cache.get(
                encoder, list(items), list(keys), lambda its: encoder.encode([prepare(v) for v in its])
            )
        return torch.as_tensor(out, dtype=torch.float32).reshape(len(items), -1)

    def featurize(
        self,
        instructions: Sequence[str],
        images: Sequence[Any] | None = None,
        *,
        cache: Any | None = None,
        image_keys: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """FloatTensor[N, dim]: text features then pooled image features of each request.

        ``images`` are PIL images or paths (required when there is an image encoder). With a
        ``FeatureCache``, texts and images are keyed by ``content_key`` (an image file by its bytes)
        unless ``image_keys`` are given.
        """
        if isinstance(instructions, str):
            raise InputError("featurize takes a list of instructions; wrap a single one in a list")
        texts = list(instructions)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"instruction #{i} is empty or not a string; pass the edit instruction text")
        text_keys = None
        if cache is not None:
            from ade_runtime.encoders.cache import content_key

            text_keys = [content_key(t) for t in texts]
        parts = [self._encode(self.text_encoder, texts, text_keys, cache)]
        if self.image_encoder is not None:
            if images is None or len(images) != len(texts):
                n = "no" if images is None else len(images)
                raise InputError(
                    f"featurize got {len(texts)} instructions and {n} images; pass one image each"
                )
            if cache is not None and image_keys is None:
                image_keys = [_image_key(im) for im in images]
            parts.append(self._encode(self.image_encoder, list(images), image_keys, cache, _load_image))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if x.shape[1] != self.dim:
            raise RuntimeError(f"encoders produced {x.shape[1]} features, expected {self.dim}")
        return x
