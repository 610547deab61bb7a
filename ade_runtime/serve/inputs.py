"""Validate one ``POST /edit`` payload into an ``EditRequest``, with errors that say the fix.

Every problem is a ``BadRequest`` carrying its HTTP status: 400 for a malformed payload, 413 for
an oversized image, 415 for an image format other than PNG/JPEG/WebP, 422 for values that parse
but cannot be served (empty or over-long instruction, unsupported mode, unknown policy ...).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.backbones.base import EditRequest
from ade_runtime.errors import InputError
from ade_runtime.loop import MAX_SIDE, validate_request
from ade_runtime.policy import POLICY_NAMES, PolicyConfig, preset

FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_IMAGE_BYTES = 20 << 20
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIELDS = ("image", "instruction", "policy", "seed", "max_seconds", "id", "response", "category")


class BadRequest(InputError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class EditJob:
    """A validated request and its per-request options."""

    request: EditRequest
    policy: str
    seed: int
    max_seconds: float | None
    response: str  # "json" (base64 PNG in the JSON) or "image" (PNG bytes, summary in a header)


def _text(payload: Any, name: str) -> str | None:
    v = payload.get(name)
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", "replace")
    if not isinstance(v, str):
        raise BadRequest(400, f"field '{name}' must be a string, got {type(v).__name__}")
    return v


def _image_bytes(payload: Any) -> bytes:
    v = payload.get("image")
    if v is None:
        raise BadRequest(
            400, "field 'image' is missing; send the image as a multipart file or a base64 string in JSON"
        )
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if not isinstance(v, str):
        raise BadRequest(400, f"field 'image' must be a base64 string or a file, got {type(v).__name__}")
    s = v.split(",", 1)[1] if v.startswith("data:") and "," in v else v
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            400, "field 'image' is not valid base64; encode the file's bytes with base64 (no line breaks)"
        ) from None


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    if len(data) > max_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes; the limit is {max_bytes} (resize or compress it)")
    if not data:
        raise BadRequest(400, "field 'image' is empty; send the image file's bytes")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise BadRequest(415, "image is not a PNG, JPEG or WebP file; convert it to PNG") from None
    except (OSError, ValueError) as exc:
        raise BadRequest(
            400, f"image cannot be read ({exc}); send a complete PNG, JPEG or WebP file"
        ) from None
    w, h = im.size
    if max(w, h) > MAX_SIDE:  # refuse before decoding the pixels
        raise BadRequest(413, f"image is {w}x{h}; each side must be at most {MAX_SIDE} px (resize it first)")
    try:
        im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(
            400, f"image cannot be decoded ({exc}); send a complete PNG, JPEG or WebP file"
        ) from None
    return im


def check_policy(name: str, base: PolicyConfig | None) -> str:
    try:
        preset(name, base)
    except ValueError:
        raise BadRequest(
            422, f"unknown policy {name!r}; use one of {', '.join(POLICY_NAMES[:-1])} or best_of_N"
        ) from None
    return name


def parse_payload(
    payload: Any,
    *,
    default_policy: str = "ade",
    base_policy: PolicyConfig | None = None,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> EditJob:
    """``payload`` is the JSON object (the HTTP layer turns a multipart form into one, image in base64)."""
    if not hasattr(payload, "get"):
        raise BadRequest(
            400, "the body must be a JSON object or a multipart form with 'image' and 'instruction'"
        )
    unknown = sorted(k for k in payload.keys() if k not in FIELDS)
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    rid = _text(payload, "id")
    if rid is not None and not ID_RE.fullmatch(rid):
        raise BadRequest(
            422,
            f"id {rid[:40]!r} is not allowed; use 1-128 letters, digits, '.', '_' or '-' (first a letter or digit)",
        )
    instruction = _text(payload, "instruction")
    if instruction is None:
        raise BadRequest(400, "field 'instruction' is missing; say what to edit")
    image = decode_image(_image_bytes(payload), max_image_bytes)
    policy = check_policy(_text(payload, "policy") or default_policy, base_policy)
    seed = _number(payload, "seed", int)
    if seed is not None and not 0 <= seed < 2**31:
        raise BadRequest(422, f"seed {seed} is out of range; use an integer in [0, 2**31)")
    max_seconds = _number(payload, "max_seconds", float)
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise BadRequest(422, f"max_seconds {max_seconds} must be a positive number of seconds")
    response = _text(payload, "response") or "json"
    if response not in ("json", "image"):
        raise BadRequest(
            422, f"response {response!r}: use 'json' (base64 PNG + summary) or 'image' (PNG bytes)"
        )
    req = EditRequest(
        image=image, instruction=instruction, id=rid or "request", category=_text(payload, "category")
    )
    try:
        req = validate_request(req)
    except InputError as exc:
        raise BadRequest(422, str(exc).replace("request 'request': ", "")) from None
    return EditJob(req, policy, 0 if seed is None else seed, max_seconds, response)


def _number(payload: Any, name: str, kind: type) -> Any:
    v = payload.get(name)
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise BadRequest(422, f"field '{name}' must be a number, got a boolean")
    try:
        if kind is int:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        return float(v)
    except (TypeError, ValueError):
        raise BadRequest(
            422, f"field '{name}' must be {'an integer' if kind is int else 'a number'}, got {v!r}"
        ) from None
