"""Shared pieces of every ADE feature encoder: the protocol, stable hashing and fingerprints.

An encoder turns instructions or images into fixed-size feature tensors for the predictors. Its
``fingerprint`` identifies exactly what produced the features (kind, model config, weights, tokenizer,
preprocessing) so an artifact trained on one encoder refuses another (see ade_runtime/artifacts.py),
and so the feature cache never mixes features of two encoders. ``spec()`` is the JSON-able recipe
that ``build_text_encoder`` / ``build_image_encoder`` turn back into an equal encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

# Bumped when the feature computation of an encoder kind changes; part of every fingerprint.
ENCODER_FORMAT_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE_HASH_MEMO: dict[tuple[str, int, int], str] = {}


@runtime_checkable
class TextEncoder(Protocol):
    dim: int

    @property
    def fingerprint(self) -> str: ...

    def spec(self) -> dict[str, Any]: ...

    def encode(self, texts: list[str]) -> torch.Tensor: ...


@runtime_checkable
class ImageEncoder(Protocol):
    dim: int
    patch_dim: int

    @property
    def fingerprint(self) -> str: ...

    def spec(self) -> dict[str, Any]: ...

    def encode(self, images: list) -> torch.Tensor: ...

    def encode_patches(self, images: list) -> torch.Tensor: ...

    def patch_grid(self, image_size: int | None = None) -> tuple[int, int]: ...


def stable_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): the input of every stable hash here."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def stable_hash(obj: Any) -> str:
    """sha256 hex of the canonical JSON of ``obj``: identical across processes and machines."""
    return hashlib.sha256(stable_json(obj).encode("utf-8")).hexdigest()


def make_fingerprint(kind: str, identity: Mapping[str, Any]) -> str:
    """``<kind>-<16 hex>`` from everything that determines the features."""
    return f"{kind}-{stable_hash({'encoder_format': ENCODER_FORMAT_VERSION, 'kind': kind, **identity})[:16]}"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file; free for Hugging Face cache blobs (their file name is the sha256)."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if _HEX64.match(name):
        return name
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASH_MEMO:
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_HASH_MEMO[key] = digest.hexdigest()
    return _FILE_HASH_MEMO[key]


def weight_files_hash(directory: str | os.PathLike) -> str | None:
    """Hash of the ``*.safetensors`` weight files of a local model directory (None when there are none)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    return stable_hash({f.name: file_sha256(f) for f in files})


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of a module's tensors (for in-memory models)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes: works for bfloat16, which numpy cannot represent
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def as_tensor(output: Any, *attrs: str) -> torch.Tensor:
    """A tensor from a model call that may return a tensor or a ModelOutput (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in attrs:
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"expected a tensor or a model output with one of {attrs}, got {type(output).__name__}")


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
