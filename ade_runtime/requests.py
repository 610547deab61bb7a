"""What a request may be: the input limits and their check, shared by the loop, the CLIs and the server.

``EditRequest`` (the source image, the instruction, an id and an optional category) is defined beside
the backbone protocol that consumes it (``ade_runtime.backbones.base``); this module says which
requests are accepted, with errors that name the fix.
"""

from __future__ import annotations

from PIL import Image

from ade_runtime.backbones.base import EditRequest
from ade_runtime.errors import InputError

MAX_INSTRUCTION_CHARS = 2000
MIN_SIDE, MAX_SIDE = 16, 4096


def _named(request: EditRequest) -> str:
    """How messages name a request: its id, or "the request" when it has none of its own."""
    return f"request {request.id!r}" if request.id and request.id != "request" else "the request"


def validate_request(request: EditRequest) -> EditRequest:
    """Check the inputs with errors that say the fix; converts the image to RGB."""
    img = request.image
    if not isinstance(img, Image.Image):
        raise InputError(f"{_named(request)}: image must be a PIL.Image, got {type(img).__name__}")
    w, h = img.size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise InputError(
            f"{_named(request)}: image is {w}x{h}; each side must be between {MIN_SIDE} and {MAX_SIDE} px"
            " (resize it first)"
        )
    if img.mode not in ("RGB", "RGBA", "L", "P", "LA"):
        raise InputError(f"{_named(request)}: image mode {img.mode!r} is not supported; convert it to RGB")
    text = (request.instruction or "").strip()
    if not text:
        raise InputError(f"{_named(request)}: the instruction is empty; say what to edit")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputError(
            f"{_named(request)}: the instruction has {len(text)} characters; the limit is "
            f"{MAX_INSTRUCTION_CHARS} (shorten it or split it into several requests)"
        )
    rgb = img.convert("RGB") if img.mode != "RGB" else img
    return EditRequest(
        image=rgb, instruction=text, id=request.id, category=request.category, meta=request.meta
    )
