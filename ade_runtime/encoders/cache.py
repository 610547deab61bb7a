"""A content-addressed on-disk feature cache: encode each image or instruction once per encoder.

Layout: ``DIR/<encoder fingerprint>[.<variant>]/shard-*.safetensors``; each shard maps content keys
(``content_key``: sha256 of the item's bytes) to that item's feature tensor, and its metadata carries
the sha256 of the data section. The index is rebuilt from the shard headers (no pickle, no index file
to corrupt). Several processes may fill one cache at once: every shard is written under a unique temp
name and moved in with os.replace, and a key computed twice is simply stored twice. A corrupt shard is
skipped with a warning, renamed ``corrupt-*`` and its features recomputed. (Content-addressed like the Hugging Face hub cache
and datasets' fingerprinted cache files, in safetensors instead of Arrow/pickle.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ade_runtime.artifacts import atomic_write_bytes
from ade_runtime.errors import InputError

CACHE_FORMAT = "ade-feature-cache/1"
_SAFE_DIR = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def content_key(item: bytes | str | Image.Image | np.ndarray) -> str:
    """sha256 hex of an item's content (str as UTF-8; images by mode, size and pixels)."""
    digest = hashlib.sha256()
    if isinstance(item, str):
        digest.update(b"str:" + item.encode("utf-8"))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        digest.update(b"bytes:" + bytes(item))
    elif isinstance(item, Image.Image):
        digest.update(f"image:{item.mode}:{item.size}:".encode() + item.tobytes())
    elif isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        digest.update(f"array:{arr.dtype.str}:{arr.shape}:".encode() + arr.tobytes())
    else:
        raise InputError(f"content_key takes bytes, str, a PIL image or an array, got {type(item).__name__}")
    return digest.hexdigest()


def _read_shard_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        size = os.fstat(fh.fileno()).st_size
        if n > size - 8:
            raise ValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(fh.read(n))
    meta = header.get("__metadata__") or {}
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a feature-cache shard (format {meta.get('format')!r})")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise ValueError("data section does not match the header (truncated?)")
    return header, n


class FeatureCache:
    """``FeatureCache(dir).get(encoder, items, keys)`` -> stacked features; misses computed and stored."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._index: dict[Path, dict[str, str]] = {}  # subdir -> key -> shard file name
        self._seen: dict[Path, set[str]] = {}  # subdir -> shard names already scanned
        self._bad: set[Path] = set()

    def _subdir(self, encoder: Any, variant: str | None) -> Path:
        fp = encoder if isinstance(encoder, str) else str(encoder.fingerprint)
        name = fp if variant is None else f"{fp}.{variant}"
        if not name or name.startswith(".") or not set(name) <= _SAFE_DIR:
            raise InputError(f"FeatureCache: fingerprint/variant {name!r} is not a safe directory name")
        return self.directory / name

    def _warn_corrupt(self, path: Path, problem: str) -> None:
        if path not in self._bad:
            self._bad.add(path)
            warnings.warn(
                f"FeatureCache: ignoring corrupt shard {path} ({problem}); its features will be recomputed",
                stacklevel=4,
            )
        # quarantine (kept for inspection, never scanned again); shard names are unique, so no race
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name("corrupt-" + path.name.removeprefix("shard-")))

    def _scan(self, sub: Path) -> dict[str, str]:
        """Add keys of shards not seen yet (ours or other processes') to the index."""
        index = self._index.setdefault(sub, {})
        seen = self._seen.setdefault(sub, set())
        if sub.is_dir():
            for path in sorted(sub.glob("shard-*.safetensors")):
                if path.name in seen:
                    continue
                seen.add(path.name)
                try:
                    header, _ = _read_shard_header(path)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self._warn_corrupt(path, str(exc))
                    continue
                for key in header:
                    if key != "__metadata__":
                        index.setdefault(key, path.name)
        return index

    def _load_shard(self, path: Path) -> dict[str, torch.Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        try:
            blob = path.read_bytes()
            n = int.from_bytes(blob[:8], "little")
            meta = json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
            if hashlib.sha256(blob[8 + n :]).hexdigest() != meta.get("data_sha256"):
                raise ValueError("sha256 of the data does not match the shard metadata")
            return st_load(blob)
        except (OSError, ValueError, SafetensorError) as exc:
            self._warn_corrupt(path, str(exc))
            return None

    def _write_shard(self, sub: Path, rows: dict[str, torch.Tensor], fingerprint: str) -> str:
        from safetensors.torch import save as st_save

        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint}
        blob = st_save(rows, metadata=meta)
        n = int.from_bytes(blob[:8], "little")
        # the data section does not depend on the metadata, so its hash can go into the final header
        blob = st_save(rows, metadata={**meta, "data_sha256": hashlib.sha256(blob[8 + n :]).hexdigest()})
        name = f"shard-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        sub.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(sub / name, blob)
        self._seen.setdefault(sub, set()).add(name)
        return name

    def get(
        self,
        encoder: Any,
        items: Sequence[Any],
        keys: Sequence[str],
        compute_fn: Callable[[list[Any]], torch.Tensor] | None = None,
        batch_size: int = 64,
        variant: str | None = None,
    ) -> torch.Tensor:
        """Features of ``items`` stacked [N, ...]; only cache misses go through ``compute_fn``.

        ``encoder`` (or a fingerprint string) names the cache namespace; ``compute_fn`` defaults to
        ``encoder.encode``; use ``variant`` (e.g. "patches") for a second feature of the same encoder.
        """
        keys = list(keys)
        if len(keys) != len(items):
            raise InputError(
                f"FeatureCache.get: {len(items)} items but {len(keys)} keys; give one key per item"
            )
        if any(not isinstance(k, str) or not k or k == "__metadata__" for k in keys):
            raise InputError("FeatureCache.get: keys must be non-empty strings (use content_key(item))")
        if batch_size < 1:
            raise InputError(f"FeatureCache.get: batch_size must be >= 1, got {batch_size}")
        compute = compute_fn if compute_fn is not None else encoder.encode
        sub = self._subdir(encoder, variant)
        fingerprint = sub.name
        found: dict[str, torch.Tensor] = {}
        for _attempt in range(2):  # second pass after dropping corrupt shards found while loading
            index = self._scan(sub)
            by_shard: dict[str, list[str]] = {}
            for k in dict.fromkeys(keys):
                if k not in found and k in index:
                    by_shard.setdefault(index[k], []).append(k)
            corrupt = False
            for shard, wanted in by_shard.items():
                tensors = self._load_shard(sub / shard)
                if tensors is None or any(k not in tensors for k in wanted):
                    corrupt = True
                    for k in [k for k, s in index.items() if s == shard]:
                        del index[k]
                    continue
                found.update({k: tensors[k] for k in wanted})
            if not corrupt:
                break
        missing = [i for i, k in enumerate(keys) if k not in found]
        first: dict[str, int] = {}
        for i in missing:
            first.setdefault(keys[i], i)
        todo = list(first.items())
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            out = compute([items[i] for _, i in chunk])
            if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != len(chunk):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InputError(
                    f"FeatureCache.get: compute_fn returned {shape} for a batch of {len(chunk)}; return a "
                    "tensor with one row per item"
                )
            rows = {k: out[j].detach().to("cpu").contiguous().clone() for j, (k, _) in enumerate(chunk)}
            name = self._write_shard(sub, rows, fingerprint)
            self._index.setdefault(sub, {}).update(dict.fromkeys(rows, name))
            found.update(rows)
        if not keys:
            return torch.zeros(0)
        shapes = {tuple(found[k].shape) for k in keys}
        if len(shapes) > 1:
            raise InputError(
                f"FeatureCache: {sub} holds features of different shapes {sorted(shapes)}; clear it"
            )
        return torch.stack([found[k] for k in keys])
