"""Scenes of the synthetic edit world (a CPU TESTBED, not a model) and their numpy renderer.

A scene is a small JSON-serialisable dataclass: a background, an image style and a list of
objects (shape, named colour, size, position, material, optional letter label) drawn in
order, so later objects occlude earlier ones. Flaws produced by the simulated backbone are
part of the scene too (``ghost`` = old attributes still visible on an object's left half,
``alpha`` < 1 = half-removed or half-added, ``artifacts`` = local distortions), so the
judge can compare a rendered attempt with the exact target scene. Images carry their scene
as JSON in a PNG text chunk (``CHUNK_KEY``); see ``imageio.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SIZES = {"small": 0.06, "medium": 0.1, "large": 0.15}  # radius as a fraction of the image side
MATERIALS = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("grey", "beige", "white", "navy", "sunset", "sky", "grass", "brick", "wood", "sand")
STYLES = ("photo", "pixel art", "pencil sketch", "watercolor", "night")
LETTERS = ("A", "E", "H", "K", "M", "T", "X", "Z")

# 5 x 5 bitmaps of the label letters (rows top to bottom).
_GLYPHS = {
    "A": ("01110", "10001", "11111", "10001", "10001"),
    "E": ("11111", "10000", "11110", "10000", "11111"),
    "H": ("10001", "10001", "11111", "10001", "10001"),
    "K": ("10010", "10100", "11000", "10100", "10010"),
    "M": ("10001", "11011", "10101", "10001", "10001"),
    "T": ("11111", "00100", "00100", "00100", "00100"),
    "X": ("10001", "01010", "00100", "01010", "10001"),
    "Z": ("11111", "00010", "00100", "01000", "11111"),
}
_GLYPH_ARR = {k: np.array([[c == "1" for c in row] for row in v]) for k, v in _GLYPHS.items()}


@dataclass
class Obj:
    """One object; ``x, y`` is its centre normalised to [0, 1], ``oid`` its stable identity."""

    oid: int
    shape: str
    color: str
    size: str
    x: float
    y: float
    material: str = "solid"
    label: str | None = None
    alpha: float = 1.0
    ghost: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Obj.shape {self.shape!r} is not one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"Obj.color {self.color!r} is not one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"Obj.size {self.size!r} is not one of {tuple(SIZES)}")
        if self.material not in MATERIALS:
            raise ValueError(f"Obj.material {self.material!r} is not one of {MATERIALS}")
        if self.label is not None and self.label not in LETTERS:
            raise ValueError(f"Obj.label {self.label!r} is not one of {LETTERS}")

    def clone(self) -> Obj:
        out = object.__new__(Obj)
        out.__dict__.update(self.__dict__)
        out.ghost = None if self.ghost is None else dict(self.ghost)
        return out

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def box(self) -> tuple[float, float, float, float]:
        """Normalised bounding box (x0, y0, x1, y1), clipped to the image."""
        r = self.radius
        return (max(0.0, self.x - r), max(0.0, self.y - r), min(1.0, self.x + r), min(1.0, self.y + r))

    def appearance(self) -> tuple:
        """The attributes the judge compares (position rounded so tiny jitter is not a flaw)."""
        return (self.shape, self.color, self.size, self.material, self.label)


@dataclass
class Scene:
    """A whole testbed image: background, style, objects in draw order, artefact blobs."""

    objects: list[Obj]
    background: str = "grey"
    style: str = "photo"
    bg_seed: int = 0
    artifacts: list[tuple[float, float, float]] = field(default_factory=list)  # (cx, cy, r) normalised
    bg_ghost: str | None = None  # old background still showing on the left half (partial edit)
    style_strength: float = 1.0

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene.background {self.background!r} is not one of {BACKGROUNDS}")
        if self.style not in STYLES:
            raise ValueError(f"Scene.style {self.style!r} is not one of {STYLES}")

    def to_json(self) -> dict[str, Any]:
        # hand-written: dataclasses.asdict deep-copies and dominated generation time
        return {
            "objects": [
                {**o.__dict__, "ghost": None if o.ghost is None else dict(o.ghost)} for o in self.objects
            ],
            "background": self.background,
            "style": self.style,
            "bg_seed": self.bg_seed,
            "artifacts": [list(a) for a in self.artifacts],
            "bg_ghost": self.bg_ghost,
            "style_strength": self.style_strength,
        }

    def key(self) -> str:
        """A canonical string of the scene (equal scenes, equal keys)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Scene:
        d = dict(obj)
        d["objects"] = [Obj(**o) for o in d.get("objects", [])]
        d["artifacts"] = [tuple(a) for a in d.get("artifacts", [])]
        return cls(**d)

    def copy(self) -> Scene:
        """A deep copy (hand-written: dataclasses.replace re-validated every object and was slow)."""
        out = object.__new__(Scene)
        out.__dict__.update(self.__dict__)
        out.objects = [o.clone() for o in self.objects]
        out.artifacts = list(self.artifacts)
        return out

    def by_oid(self) -> dict[int, Obj]:
        return {o.oid: o for o in self.objects}

    def next_oid(self) -> int:
        return 1 + max((o.oid for o in self.objects), default=-1)


# ---- rendering -------------------------------------------------------------------------------

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _GRID_CACHE:
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        _GRID_CACHE[n] = (c[None, :].repeat(n, 0), c[:, None].repeat(n, 1))
    return _GRID_CACHE[n]


_BG_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def _background(name: str, n: int, seed: int) -> np.ndarray:
    key = (name, n, seed % 16)  # 16 texture variants per background keep the cache small
    if key in _BG_CACHE:
        return _BG_CACHE[key]
    xs, ys = _grid(n)
    rng = np.random.default_rng(seed % 16)
    noise = rng.random((n, n), dtype=np.float32)
    plain = {
        "grey": (150, 150, 150),
        "beige": (225, 210, 180),
        "white": (252, 252, 252),
        "navy": (30, 40, 90),
    }
    if name in plain:
        img = np.broadcast_to(np.array(plain[name], np.float32), (n, n, 3)).copy()
    elif name == "sunset":
        img = (1 - ys)[..., None] * np.array([250, 150, 60], np.float32) + ys[..., None] * np.array(
            [120, 50, 130]
        )
    elif name == "sky":
        img = (1 - ys)[..., None] * np.array([90, 150, 230], np.float32) + ys[..., None] * np.array(
            [200, 225, 250]
        )
    elif name == "grass":
        blades = (np.sin(xs * 90 + noise * 3) > 0.3).astype(np.float32)
        img = np.stack([40 + 30 * noise, 120 + 50 * blades, 40 + 20 * noise], -1)
    elif name == "brick":
        row = (ys * 8).astype(int)
        mortar = ((ys * 8) % 1 < 0.12) | (((xs * 5 + 0.5 * (row % 2)) % 1) < 0.06)
        img = np.where(
            mortar[..., None], np.float32(200), np.array([170, 70, 50], np.float32) + 20 * noise[..., None]
        )
    elif name == "wood":
        grain = np.sin(ys * 60 + 4 * np.sin(xs * 6) + noise)
        img = np.stack([140 + 25 * grain, 95 + 15 * grain, 55 + 10 * grain], -1)
    else:  # sand
        img = np.stack([220 + 20 * noise, 195 + 20 * noise, 140 + 15 * noise], -1)
    img = np.clip(img, 0, 255).astype(np.float32)
    _BG_CACHE[key] = img
    return img


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
    if shape == "triangle":
        return (dy <= 0.7 * r) & (abs(dx) <= (dy + r) / 1.7)
    if shape == "diamond":
        return abs(dx) + abs(dy) <= r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((abs(dx) <= 0.3 * r) & (abs(dy) <= r)) | ((abs(dy) <= 0.3 * r) & (abs(dx) <= r))
    if shape == "hexagon":
        return (abs(dx) <= 0.87 * r) & (0.5 * abs(dx) + 0.866 * abs(dy) <= 0.87 * r)
    # star: five points, one pointing up
    theta = np.arctan2(dy, dx) + np.pi / 2
    rad = np.sqrt(dx * dx + dy * dy)
    return rad <= r * (0.55 + 0.45 * np.cos(5 * theta))


def _pattern(material: str, xs: np.ndarray, ys: np.ndarray, n: int) -> np.ndarray:
    if material == "striped":
        return (((xs + ys) * n / 6) % 1 < 0.5).astype(np.float32)
    if material == "dotted":
        u, v = (xs * n / 5) % 1 - 0.5, (ys * n / 5) % 1 - 0.5
        return (u * u + v * v < 0.06).astype(np.float32)
    if material == "checkered":
        return (((xs * n / 5).astype(int) + (ys * n / 5).astype(int)) % 2).astype(np.float32)
    return np.zeros_like(xs)


def _paint(img: np.ndarray, o: Obj, n: int, attrs: dict[str, Any] | None, left_only: bool) -> None:
    shape = (attrs or {}).get("shape", o.shape)
    color = (attrs or {}).get("color", o.color)
    size = (attrs or {}).get("size", o.size)
    material = (attrs or {}).get("material", o.material)
    r = SIZES[size]
    x0, x1 = max(0, int((o.x - r) * n) - 1), min(n, int((o.x + r) * n) + 2)
    y0, y1 = max(0, int((o.y - r) * n) - 1), min(n, int((o.y + r) * n) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    xs, ys = _grid(n)
    xs, ys = xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]
    mask = _shape_mask(shape, xs - o.x, ys - o.y, r)
    if left_only:
        mask &= xs < o.x
    if not mask.any():
        return
    base = np.array(COLORS[color], np.float32)
    pat = _pattern(material, xs, ys, n)[..., None]
    # light colours get dark patterns and vice versa, so every material is visible
    alt = base * 0.45 if base.mean() > 110 else base * 0.4 + 150
    col = base * (1 - pat) + alt * pat
    if o.label is not None and not left_only:
        g = _GLYPH_ARR[o.label]
        gx = ((xs - o.x) / (1.1 * r) + 0.5) * 5
        gy = ((ys - o.y) / (1.1 * r) + 0.5) * 5
        inside = (gx >= 0) & (gx < 5) & (gy >= 0) & (gy < 5)
        hit = np.zeros_like(inside)
        hit[inside] = g[gy[inside].astype(int), gx[inside].astype(int)]
        ink = np.float32(20) if base.mean() > 110 else np.float32(240)
        col = np.where(hit[..., None], ink, col)
    a = np.float32(o.alpha) * mask[..., None]
    region = img[y0:y1, x0:x1]
    region[...] = region * (1 - a) + col * a


def _stylise(img: np.ndarray, style: str, strength: float) -> np.ndarray:
    if style == "photo" or strength <= 0:
        return img
    n = img.shape[0]
    if style == "pixel art":
        k = max(2, n // 16)
        small = img[k // 2 :: k, k // 2 :: k]
        out = np.repeat(np.repeat(small, k, 0), k, 1)[:n, :n]
    elif style == "pencil sketch":
        g = img.mean(-1)
        edge = np.abs(np.diff(g, axis=0, prepend=g[:1])) + np.abs(np.diff(g, axis=1, prepend=g[:, :1]))
        out = np.repeat(np.clip(245 - 3 * edge, 0, 255)[..., None], 3, -1)
    elif style == "watercolor":
        p = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge")
        blur = sum(p[i : i + n, j : j + n] for i in range(0, 5, 2) for j in range(0, 5, 2)) / 9
        out = 0.7 * blur + 0.3 * 255
    else:  # night
        out = img * np.array([0.35, 0.4, 0.7], np.float32)
    return img * (1 - strength) + out * strength


_RENDER_CACHE: dict[tuple[str, int], np.ndarray] = {}


def render(scene: Scene, size: int, scene_key: str | None = None) -> np.ndarray:
    """Render a scene to a read-only (size, size, 3) uint8 array; deterministic and cached."""
    key = (scene_key or scene.key(), size)
    hit = _RENDER_CACHE.get(key)
    if hit is None:
        if len(_RENDER_CACHE) > 512:
            _RENDER_CACHE.clear()
        hit = _render(scene, size)
        hit.flags.writeable = False
        _RENDER_CACHE[key] = hit
    return hit


def _render(scene: Scene, size: int) -> np.ndarray:
    img = _background(scene.background, size, scene.bg_seed).copy()
    if scene.bg_ghost is not None:
        half = size // 2
        img[:, :half] = _background(scene.bg_ghost, size, scene.bg_seed)[:, :half]
    for o in scene.objects:
        if o.alpha > 0:
            _paint(img, o, size, None, False)
            if o.ghost:
                _paint(img, o, size, o.ghost, True)
    img = _stylise(img, scene.style, scene.style_strength)
    if scene.artifacts:
        xs, ys = _grid(size)
        for cx, cy, r in scene.artifacts:
            d = ((xs - cx) ** 2 + (ys - cy) ** 2) <= r * r
            # a checker of saturated noise: the "melted pixels" look of a diffusion artefact
            noise = ((xs * size).astype(int) * 7 + (ys * size).astype(int) * 13) % 5 * 60
            img = np.where(d[..., None], np.stack([noise, 255 - noise, noise * 0.5], -1), img)
    return np.clip(img, 0, 255).astype(np.uint8)
