"""Flaw-map geometry of the critique head: regions of a patch map, the encoder's view window, masks.

Pure numpy: the critique head's [K, h, w] flaw map becomes the top flaws (kind + box), boxes move
between the whole image and the part of it the encoder sees (MagicBrush centre crop), and the flaws
become the mask that confines the next refinement round.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ade_runtime.traces.records import Flaw


def _components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a small boolean grid (pure Python: the grids are ~16x16)."""
    seen = np.zeros_like(binary, dtype=bool)
    out = []
    rows, cols = binary.shape
    for r0, c0 in zip(*np.nonzero(binary), strict=True):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, comp = deque([(int(r0), int(c0))]), []
        while queue:
            r, c = queue.popleft()
            comp.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and binary[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(comp)
    return out


def flaw_regions(
    flaw_map: np.ndarray, kinds: Sequence[str], threshold: float, max_flaws: int, force: bool = False
) -> list[tuple[Flaw, float]]:
    """Top flaws from a [K, h, w] map: connected regions where P(any flaw) >= threshold.

    Each region's kind is the kind with the most probability mass inside it and its box is the
    region's bounding box in normalised coordinates. With ``force`` (the attempt is predicted to
    fail) and no region above the threshold, the region around the most suspicious patch (patches
    standing out above the map's median) is returned, so a failing attempt gets spatial feedback.
    """
    anyflaw = flaw_map.sum(0)
    rows, cols = anyflaw.shape
    comps = _components(anyflaw >= threshold)
    if not comps and force and anyflaw.size:
        peak = np.unravel_index(int(anyflaw.argmax()), anyflaw.shape)
        # the patches that stand out: above halfway between the map's median and its peak
        level = 0.5 * (float(np.median(anyflaw)) + float(anyflaw[peak]))
        comps = [c for c in _components(anyflaw >= level) if (int(peak[0]), int(peak[1])) in c]
    found = []
    for comp in comps:
        rr = np.array([r for r, _ in comp])
        cc = np.array([c for _, c in comp])
        kind = kinds[int(flaw_map[:, rr, cc].sum(1).argmax())]
        box = (cc.min() / cols, rr.min() / rows, (cc.max() + 1) / cols, (rr.max() + 1) / rows)
        found.append((Flaw(kind=kind, box=tuple(float(v) for v in box)), float(anyflaw[rr, cc].max())))
    found.sort(key=lambda fs: -fs[1])
    return found[:max_flaws]


def crop_window(image_encoder: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a (width x height) image the encoder sees, normalised (x0, y0, x1, y1).

    DINOv2's MagicBrush preprocessing resizes the shorter side and centre-crops, so the patch grid
    covers only this window; flaw boxes are mapped into it for training and back out at run time.
    """
    pre = getattr(image_encoder, "preprocess", None)
    if pre is None or not hasattr(pre, "crop"):
        return (0.0, 0.0, 1.0, 1.0)
    # the same arithmetic as ImagePreprocess: shorter side -> resize, then a centred crop
    if width <= height:
        rw, rh = pre.resize, int(pre.resize * height / width)
    else:
        rw, rh = int(pre.resize * width / height), pre.resize
    left, top = round((rw - pre.crop) / 2.0), round((rh - pre.crop) / 2.0)
    return (left / rw, top / rh, (left + pre.crop) / rw, (top + pre.crop) / rh)


def to_view(box: Sequence[float], window: Sequence[float]) -> tuple[float, float, float, float] | None:
    """An image box in the encoder's view window (clipped); None when it lies outside the view."""
    lo, size = np.array(window[:2] * 2), np.array(window[2:] * 2) - np.array(window[:2] * 2)
    b = tuple(float(v) for v in np.clip((np.asarray(box, dtype=float) - lo) / size, 0.0, 1.0))
    return b if b[0] < b[2] and b[1] < b[3] else None  # type: ignore[return-value]


def from_view(box: Sequence[float], window: Sequence[float]) -> tuple[float, float, float, float]:
    """A box in the encoder's view window back in whole-image coordinates."""
    lo, size = np.array(window[:2] * 2), np.array(window[2:] * 2) - np.array(window[:2] * 2)
    return tuple(float(v) for v in lo + np.asarray(box, dtype=float) * size)  # type: ignore[return-value]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two normalised (x0, y0, x1, y1) boxes; 0.0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def region_mask(flaws: Sequence[Flaw], height: int, width: int, margin: float) -> np.ndarray:
    """H x W float mask: 1 inside every flaw box dilated by ``margin`` (fraction of a side)."""
    mask = np.zeros((height, width), dtype=np.float32)
    for flaw in flaws:
        x0, y0, x1, y1 = flaw.box
        c0, c1 = int(np.floor(max(0.0, x0 - margin) * width)), int(np.ceil(min(1.0, x1 + margin) * width))
        r0, r1 = int(np.floor(max(0.0, y0 - margin) * height)), int(np.ceil(min(1.0, y1 + margin) * height))
        mask[r0:r1, c0:c1] = 1.0
    return mask
