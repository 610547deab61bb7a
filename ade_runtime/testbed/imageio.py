"""Testbed images carry their scene: JSON in a PNG text chunk (TESTBED provenance, not metadata of real images).

The chunk ``ade-testbed`` holds ``{"scene": ..., "source": ...}``: the scene as rendered and the
original source scene of the request, so the simulated backbone and the judge work from the image
file alone. In memory the same JSON lives in ``image.info[CHUNK_KEY]``.

An attempt's image also carries its ``sample``: the sampler's own variation. Two attempts that land
on the same scene (the same edit, done right or wrong the same way) are still two samples, never
pixel-identical, as real diffusion samples are not: ``grain`` tints them faintly by the sample
number, and every scorer (the cheap scores, the preview, the emulated reward model: they read the
chunk) draws its noise per attempt image, not once per scene. The judge reads the scene alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ade_runtime.errors import InputError
from ade_runtime.testbed.scene import Scene, render
from ade_runtime.traces.staging import file_mode

CHUNK_KEY = "ade-testbed"


GRAIN_LEVEL = 2  # the largest tint, in intensity levels per channel


def grain(pixels: np.ndarray, sample: int, allow: np.ndarray | None = None) -> np.ndarray:
    """``pixels`` with the sample's own variation (a new array): a faint tint of at most GRAIN_LEVEL
    levels per channel (never none), the kind of global drift two diffusion samples of one edit show.
    Spatially flat, so it points at no region; ``allow``: an edit mask (1 = may change) outside which
    no pixel moves."""
    rng = np.random.default_rng([int(sample) & 0xFFFFFFFF, 0x6EA1])
    tint = rng.integers(-GRAIN_LEVEL, GRAIN_LEVEL + 1, 3)
    if not tint.any():
        tint[int(rng.integers(3))] = 1
    out = np.array(pixels, dtype=np.int16) + tint.astype(np.int16)
    if allow is not None:
        out = np.where((np.asarray(allow) >= 0.5)[..., None], out, pixels)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_image(
    scene: Scene,
    source: Scene,
    size: int,
    pixels: np.ndarray | None = None,
    keys: tuple[str, str] | None = None,
    sample: int | None = None,
    allow: np.ndarray | None = None,
) -> Image.Image:
    """A PIL image of ``scene`` (or of given pixels) carrying the scene and the source as JSON.

    ``keys`` = (scene.key(), source.key()) when the caller has them already (saves re-encoding);
    ``sample``: an attempt's sample number (its grain and its chunk's ``sample``); None for source
    images, which are the same picture every time; ``allow``: the edit mask the grain stays inside.
    """
    scene_key, source_key = keys or (scene.key(), source.key())
    base = render(scene, size, scene_key) if pixels is None else pixels
    img = Image.fromarray(base if sample is None else grain(base, sample, allow))
    # canonical JSON: equal scenes and samples give equal chunks (generation names image files by it)
    tail = "" if sample is None else f',"sample":{int(sample)}'
    img.info[CHUNK_KEY] = '{"scene":' + scene_key + ',"source":' + source_key + tail + "}"
    return img


def read_scenes(image: Image.Image, what: str = "image") -> tuple[Scene, Scene]:
    """(scene, source scene) of a testbed image; InputError when the chunk is missing or broken."""
    scene, source = parse_chunk(image.info.get(CHUNK_KEY), what)
    return scene.copy(), source.copy()


_CHUNK_CACHE: dict[str, tuple[Scene, Scene]] = {}


def parse_chunk(raw: str | None, what: str) -> tuple[Scene, Scene]:
    """Parse (cached; callers must not mutate the result, ``read_scenes`` copies)."""
    if raw is not None and raw in _CHUNK_CACHE:
        return _CHUNK_CACHE[raw]
    if raw is None:
        raise InputError(
            f"{what} has no '{CHUNK_KEY}' PNG text chunk: the synthetic backbone and judge only work on "
            "testbed images (make one with `ade-testbed request --out DIR`), not on real photos"
        )
    try:
        obj = json.loads(raw)
        out = Scene.from_json(obj["scene"]), Scene.from_json(obj["source"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{what}: the '{CHUNK_KEY}' chunk is not a valid testbed scene ({e})") from e
    if len(_CHUNK_CACHE) > 1024:
        _CHUNK_CACHE.clear()
    _CHUNK_CACHE[raw] = out
    return out


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically (temp file + os.replace), keeping the testbed chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if CHUNK_KEY in image.info:
        info.add_text(CHUNK_KEY, image.info[CHUNK_KEY], zip=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.fchmod(fd, file_mode())
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=info, compress_level=6)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_png(path: str | Path) -> Image.Image:
    """Open a testbed PNG with its chunk (fully loaded, file closed)."""
    try:
        with Image.open(path) as im:
            im.load()
            out = im.convert("RGB")
            out.info.update({k: v for k, v in im.info.items() if isinstance(v, str)})
            return out
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}") from e
