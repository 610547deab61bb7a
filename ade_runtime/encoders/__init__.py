"""Feature encoders for ADE's predictors: text (hashing n-grams, HF text models), image (DINOv2, CLIP,
pixel statistics) and a content-addressed feature cache.

``build_text_encoder(spec)`` / ``build_image_encoder(spec)`` turn an encoder's ``spec()`` back into an
equal encoder (same ``fingerprint``); artifacts store specs and fingerprints in their feature spec
(ade_runtime/artifacts.py). Backbone libraries (transformers, tokenizers) are imported lazily inside
the HF encoders' functions only, so ``import ade_runtime.encoders`` needs just torch, numpy and pillow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ade_runtime.encoders.base import ImageEncoder, TextEncoder, stable_hash
from ade_runtime.encoders.cache import FeatureCache, content_key
from ade_runtime.encoders.hashing import HashingTextEncoder
from ade_runtime.encoders.hf_image import ClipVisionEncoder, Dinov2Encoder, ImagePreprocess
from ade_runtime.encoders.hf_text import HFTextEncoder, build_wordlevel_tokenizer, minilm_path
from ade_runtime.encoders.pixels import PixelStatsEncoder
from ade_runtime.errors import InputError

TEXT_KINDS = ("hashing", "hf")
IMAGE_KINDS = ("pixels", "dinov2", "clip")


def _kwargs(spec: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise InputError(f"{where}: an encoder spec is a dict with a 'kind' key, got {spec!r}")
    kw = dict(spec)
    return kw.pop("kind"), kw


def build_text_encoder(spec: Mapping[str, Any]) -> TextEncoder:
    """``{"kind": "hashing", "dim": 512}`` or ``{"kind": "hf", "model": id_or_path, ...}`` -> encoder."""
    kind, kw = _kwargs(spec, "build_text_encoder")
    try:
        if kind == "hashing":
            return HashingTextEncoder(**kw)
        if kind == "hf":
            return HFTextEncoder(**kw)
    except TypeError as exc:
        raise InputError(f"build_text_encoder: bad field in {kind!r} spec {dict(spec)}: {exc}") from None
    raise InputError(f"build_text_encoder: unknown kind {kind!r}; use one of {list(TEXT_KINDS)}")


def build_image_encoder(spec: Mapping[str, Any]) -> ImageEncoder:
    """``{"kind": "pixels"}``, ``{"kind": "dinov2", "model": ...}`` or ``{"kind": "clip", ...}`` -> encoder."""
    kind, kw = _kwargs(spec, "build_image_encoder")
    try:
        if kind == "pixels":
            return PixelStatsEncoder(**kw)
        if kind == "dinov2":
            return Dinov2Encoder(**kw)
        if kind == "clip":
            return ClipVisionEncoder(**kw)
    except TypeError as exc:
        raise InputError(f"build_image_encoder: bad field in {kind!r} spec {dict(spec)}: {exc}") from None
    raise InputError(f"build_image_encoder: unknown kind {kind!r}; use one of {list(IMAGE_KINDS)}")


def build_encoder(spec: Mapping[str, Any]) -> TextEncoder | ImageEncoder:
    """Text or image encoder, dispatched on ``spec["kind"]`` (the kinds are disjoint)."""
    kind, _ = _kwargs(spec, "build_encoder")
    return build_text_encoder(spec) if kind in TEXT_KINDS else build_image_encoder(spec)


def encoders_from_feature_spec(feature_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rebuild the encoders an artifact was trained with: role -> encoder (from ``feature_spec["encoders"]``)."""
    out: dict[str, Any] = {}
    for role, entry in ((feature_spec or {}).get("encoders") or {}).items():
        if not isinstance(entry, Mapping) or "spec" not in entry:
            raise InputError(
                f"feature_spec.encoders.{role} has no 'spec'; re-export the artifact with encoder objects"
            )
        out[role] = build_encoder(entry["spec"])
    return out


__all__ = [
    "ClipVisionEncoder",
    "Dinov2Encoder",
    "FeatureCache",
    "HFTextEncoder",
    "HashingTextEncoder",
    "ImageEncoder",
    "ImagePreprocess",
    "PixelStatsEncoder",
    "TextEncoder",
    "build_encoder",
    "build_image_encoder",
    "build_text_encoder",
    "build_wordlevel_tokenizer",
    "content_key",
    "encoders_from_feature_spec",
    "minilm_path",
    "stable_hash",
]
