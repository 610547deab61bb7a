"""Images to bytes in memory and image files read whole, the way every part of ADE does it.

``image_bytes`` encodes a PIL image (PNG by default) for an HTTP response, a data URL or an atomic
file write; ``open_rgb`` reads an image file fully into an RGB image and closes the file. Trace
path checks live in ``ade_runtime.traces.images``; the testbed's scene-carrying PNGs in
``ade_runtime.testbed.imageio``.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image


def image_bytes(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """The file bytes of ``image`` in ``fmt`` (PIL's format name); ``options`` go to ``Image.save``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as a loaded RGB image (the file is closed on return)."""
    with Image.open(path) as im:
        return im.convert("RGB")
