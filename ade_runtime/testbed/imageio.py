"""Testbed images carry their scene: JSON in a PNG text chunk (TESTBED provenance, not metadata of real images).

The chunk ``ade-testbed`` holds ``{"scene": ..., "source": ...}``: the scene as rendered and the
original source scene of the request, so the simulated backbone and the judge work from the image
file alone. In memory the same JSON lives in ``image.info[CHUNK_KEY]``.
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


def make_image(
    scene: Scene,
    source: Scene,
    size: int,
    pixels: np.ndarray | None = None,
    keys: tuple[str, str] | None = None,
) -> Image.Image:
    """A PIL image of ``scene`` (or of given pixels) carrying the scene and the source as JSON.

    ``keys`` = (scene.key(), source.key()) when the caller has them already (saves re-encoding).
    """
    scene_key, source_key = keys or (scene.key(), source.key())
    img = Image.fromarray(render(scene, size, scene_key) if pixels is None else pixels)
    # canonical JSON: equal scenes give equal chunks (generation names image files by it)
    img.info[CHUNK_KEY] = '{"scene":' + scene_key + ',"source":' + source_key + "}"
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
