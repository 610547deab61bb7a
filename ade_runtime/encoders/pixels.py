"""PixelStatsEncoder: a cheap, dependency-free image descriptor (a baseline, not a learned representation).

Colour histograms, a coarse grid of mean colours, per-cell edge density and global colour moments
(in the spirit of classic global descriptors such as colour histograms and GIST-like grids). It
is the default image feature of the CPU testbed (ade_runtime/testbed), where scenes are flat shapes,
and the baseline any learned image encoder (DINOv2, CLIP) must beat. ``encode_patches`` gives a
per-cell descriptor on a ``patch_grid`` so that spatial heads (critique flaw maps) run without a ViT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ade_runtime.encoders.base import make_fingerprint
from ade_runtime.errors import InputError

# Gradient magnitude (on [0, 1] intensities) above which a pixel counts as an edge.
EDGE_THRESHOLD = 0.1


def _to_array(img: Any, size: int, index: int) -> np.ndarray:
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise InputError(
                f"PixelStatsEncoder: image {index} is an array of shape {img.shape}, expected HxWx3"
            )
        img = Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    if not isinstance(img, Image.Image):
        raise InputError(f"PixelStatsEncoder: image {index} is {type(img).__name__}, expected a PIL image")
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _cells(x: np.ndarray, g: int) -> np.ndarray:
    """[N, S, S, ...] -> [N, g, g, S//g, S//g, ...] blocks (S divisible by g)."""
    n, s = x.shape[0], x.shape[1]
    c = s // g
    return x.reshape(n, g, c, g, c, *x.shape[3:]).swapaxes(2, 3)


@dataclass
class PixelStatsEncoder:
    """Colour histograms + coarse colour grid + edge density; ``dim = 3*bins + 4*grid**2 + 7``."""

    size: int = 64
    bins: int = 8
    grid: int = 4
    patches: int = 8

    def __post_init__(self) -> None:
        for field, value in (
            ("size", self.size),
            ("bins", self.bins),
            ("grid", self.grid),
            ("patches", self.patches),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"PixelStatsEncoder: {field} must be a positive int, got {value!r}")
        for field, value in (("grid", self.grid), ("patches", self.patches)):
            if self.size % value:
                raise InputError(f"PixelStatsEncoder: size {self.size} must be divisible by {field} {value}")
        self.dim = 3 * self.bins + 4 * self.grid**2 + 7
        self.patch_dim = 13

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "pixels",
            "size": self.size,
            "bins": self.bins,
            "grid": self.grid,
            "patches": self.patches,
        }

    @property
    def fingerprint(self) -> str:
        return make_fingerprint(
            "pixels", {"spec": self.spec(), "edge_threshold": EDGE_THRESHOLD, "resample": "bilinear"}
        )

    def patch_grid(self, image_size: int | None = None) -> tuple[int, int]:
        return (self.patches, self.patches)

    def _batch(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(images, Image.Image):
            raise InputError("PixelStatsEncoder takes a list of images, got a single image; wrap it in [ ]")
        x = np.stack([_to_array(im, self.size, i) for i, im in enumerate(images)]) if len(images) else None
        if x is None:
            return np.zeros((0, self.size, self.size, 3), np.float32), np.zeros(
                (0, self.size, self.size), np.float32
            )
        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gx = np.zeros_like(gray)
        gy = np.zeros_like(gray)
        gx[:, :, 1:-1] = (gray[:, :, 2:] - gray[:, :, :-2]) / 2
        gy[:, 1:-1, :] = (gray[:, 2:, :] - gray[:, :-2, :]) / 2
        edges = (np.hypot(gx, gy) > EDGE_THRESHOLD).astype(np.float32)
        return x, edges

    def encode(self, images: list) -> torch.Tensor:
        """FloatTensor [N, dim] of global descriptors."""
        x, edges = self._batch(images)
        n = x.shape[0]
        if n == 0:
            return torch.zeros(0, self.dim)
        q = np.clip((x * self.bins).astype(np.int64), 0, self.bins - 1)  # [N, S, S, 3]
        hist = np.stack(
            [
                np.stack([np.bincount(q[i, ..., c].ravel(), minlength=self.bins) for c in range(3)])
                for i in range(n)
            ]
        ).astype(np.float32) / float(self.size * self.size)
        grid_rgb = _cells(x, self.grid).mean(axis=(3, 4))  # [N, g, g, 3]
        grid_edges = _cells(edges, self.grid).mean(axis=(3, 4))  # [N, g, g]
        moments = np.concatenate(
            [x.mean(axis=(1, 2)), x.std(axis=(1, 2)), edges.mean(axis=(1, 2))[:, None]], axis=1
        )
        feats = np.concatenate(
            [hist.reshape(n, -1), grid_rgb.reshape(n, -1), grid_edges.reshape(n, -1), moments], axis=1
        )
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    def encode_patches(self, images: list) -> torch.Tensor:
        """FloatTensor [N, patches**2, 13]: per cell mean, std, min, max RGB and edge density (row-major)."""
        x, edges = self._batch(images)
        n, p = x.shape[0], self.patches
        if n == 0:
            return torch.zeros(0, p * p, self.patch_dim)
        cells = _cells(x, p)  # [N, p, p, c, c, 3]
        feats = np.concatenate(
            [
                cells.mean(axis=(3, 4)),
                cells.std(axis=(3, 4)),
                cells.min(axis=(3, 4)),
                cells.max(axis=(3, 4)),
                _cells(edges, p).mean(axis=(3, 4))[..., None],
            ],
            axis=-1,
        )
        return torch.from_numpy(
            np.ascontiguousarray(feats.reshape(n, p * p, self.patch_dim), dtype=np.float32)
        )
