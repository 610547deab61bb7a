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
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from ade_runtime.backbones.base import EditRequest
from ade_runtime.errors import InputError
from ade_runtime.policy import POLICY_NAMES, PolicyConfig, preset
from ade_runtime.requests import MAX_INSTRUCTION_CHARS, MAX_SIDE, validate_request

FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_IMAGE_BYTES = 20 << 20
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIELDS = ("image", "instruction", "policy", "seed", "max_seconds", "id", "response", "category")
INTERNAL = ("_ticket", "_upload")  # set by the HTTP gate (server.py), never by a client
UPLOAD_RE = re.compile(r"u-[0-9]{1,18}")
# characters a field may hold before any other check (the instruction's own limit is checked stripped)
MAX_CHARS = {
    "instruction": 4 * MAX_INSTRUCTION_CHARS,
    "policy": 64,
    "response": 16,
    "category": 64,
    "id": 128,
}
MAX_NUMBER_CHARS = 32  # a number sent as text (multipart) or as a JSON number of more digits is refused
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server: ade-serve's ``--max-*`` options; more is a 422."""

    max_candidates: int = 16
    max_rounds: int = 4
    max_tokens: int = 2048
    max_seconds: float = 300.0
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_rounds", "max_image_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} {v!r}: use an integer >= 1")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise InputError(f"--max-tokens {self.max_tokens!r}: use an integer >= 0")
        if not (isinstance(self.max_seconds, (int, float)) and math.isfinite(self.max_seconds)):
            raise InputError(f"--max-seconds {self.max_seconds!r}: use a positive number of seconds")
        if self.max_seconds <= 0:
            raise InputError(f"--max-seconds {self.max_seconds!r}: use a positive number of seconds")


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
    config: PolicyConfig
    seed: int
    max_seconds: float
    response: str  # "json" (base64 PNG in the JSON) or "image" (PNG bytes, summary in a header)
    ticket: int | None = None  # the gate's number for this request (client disconnects cancel it)


def _text(payload: Any, name: str) -> str | None:
    v = payload.get(name)
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", "replace")
    if not isinstance(v, str):
        raise BadRequest(400, f"field '{name}' must be a string, got {type(v).__name__}")
    limit = MAX_CHARS[name]
    if len(v) > limit:
        raise BadRequest(422, f"field '{name}' has {len(v)} characters; the limit is {limit}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            422, f"field '{name}' is not valid Unicode (a lone surrogate escape); send UTF-8 text"
        ) from None
    if name != "instruction" and CONTROL_RE.search(v):
        raise BadRequest(422, f"field '{name}' contains control characters; send plain text")
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


def open_image(data: bytes, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """Read the image's header only: format, size and mode, with no pixel decoded (cheap)."""
    if len(data) > max_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes; the limit is {max_bytes} (resize or compress it)")
    if not data:
        raise BadRequest(400, "field 'image' is empty; send the image file's bytes")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise BadRequest(415, "image is not a PNG, JPEG or WebP file; convert it to PNG") from None
    except Image.DecompressionBombError as exc:  # PIL refuses > 2x MAX_IMAGE_PIXELS before decoding
        raise BadRequest(
            413, f"image is too large ({exc}); each side must be at most {MAX_SIDE} px"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadRequest(
            400, f"image cannot be read ({exc}); send a complete PNG, JPEG or WebP file"
        ) from None
    w, h = im.size
    if max(w, h) > MAX_SIDE:  # refuse before decoding the pixels
        raise BadRequest(413, f"image is {w}x{h}; each side must be at most {MAX_SIDE} px (resize it first)")
    return im


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    im = open_image(data, max_bytes)
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadRequest(
            400, f"image cannot be decoded ({exc}); send a complete PNG, JPEG or WebP file"
        ) from None
    return im


def check_policy(name: str, base: PolicyConfig | None, limits: Limits | None = None) -> PolicyConfig:
    """The policy's config, refused (422) when unknown or when it asks for more than ``limits``."""
    try:
        cfg = preset(name, base)
    except ValueError:
        raise BadRequest(
            422, f"unknown policy {name!r}; use one of {', '.join(POLICY_NAMES[:-1])} or best_of_N"
        ) from None
    if limits is None:
        return cfg
    over = [
        (cfg.max_candidates, limits.max_candidates, "candidates", "--max-candidates"),
        (cfg.s_max, limits.max_rounds, "rounds per candidate", "--max-rounds"),
        (cfg.reasoning_tokens or 0, limits.max_tokens, "reasoning tokens", "--max-tokens"),
    ]
    for asked, cap, what, option in over:
        if asked > cap:
            raise BadRequest(
                422,
                f"policy {name!r} asks for {asked} {what}; this server allows at most {cap} ({option}); "
                "ask for fewer",
            )
    return cfg


def check_fields(
    payload: Any,
    *,
    default_policy: str = "ade",
    base_policy: PolicyConfig | None = None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Every field but the image's pixels, bounded: what the HTTP gate checks before any work."""
    limits = limits or Limits()
    if not hasattr(payload, "get"):
        raise BadRequest(
            400, "the body must be a JSON object or a multipart form with 'image' and 'instruction'"
        )
    unknown = sorted(str(k)[:40] for k in payload.keys() if k not in FIELDS + INTERNAL)
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
    category = _text(payload, "category")
    if category is not None and not category.strip():
        raise BadRequest(422, "field 'category' is blank; leave it out or name the edit's category")
    name = _text(payload, "policy") or default_policy
    config = check_policy(name, base_policy, limits)
    seed = _number(payload, "seed", int, 0, 2**31 - 1)
    max_seconds = _number(payload, "max_seconds", float, 0.0, limits.max_seconds)
    response = _text(payload, "response") or "json"
    if response not in ("json", "image"):
        raise BadRequest(
            422, f"response {response!r}: use 'json' (base64 PNG + summary) or 'image' (PNG bytes)"
        )
    return {
        "id": rid,
        "instruction": instruction,
        "category": category,
        "policy": name,
        "config": config,
        "seed": 0 if seed is None else seed,
        "max_seconds": limits.max_seconds if max_seconds is None else max_seconds,
        "response": response,
    }


def parse_payload(
    payload: Any,
    *,
    default_policy: str = "ade",
    base_policy: PolicyConfig | None = None,
    max_image_bytes: int | None = None,
    limits: Limits | None = None,
    image: bytes | None = None,
) -> EditJob:
    """``payload`` is the JSON object (the HTTP layer turns a multipart form into one, image in base64;
    or it hands the image's bytes over as ``image``)."""
    limits = limits or Limits()
    if max_image_bytes is not None:
        limits = replace(limits, max_image_bytes=max_image_bytes)
    f = check_fields(payload, default_policy=default_policy, base_policy=base_policy, limits=limits)
    pixels = decode_image(_image_bytes(payload) if image is None else image, limits.max_image_bytes)
    req = EditRequest(
        image=pixels, instruction=f["instruction"], id=f["id"] or "request", category=f["category"]
    )
    try:
        req = validate_request(req)
    except InputError as exc:
        raise BadRequest(422, str(exc).replace("request 'request': ", "")) from None
    ticket = payload.get("_ticket")
    ticket = ticket if isinstance(ticket, int) and not isinstance(ticket, bool) else None
    return EditJob(req, f["policy"], f["config"], f["seed"], f["max_seconds"], f["response"], ticket)


def _number(payload: Any, name: str, kind: type, lo: float, hi: float) -> Any:
    """A bounded number from JSON (a number) or a form (text); anything else, or out of [lo, hi], is a 422."""
    v = payload.get(name)
    if v is None or v == "":
        return None
    what = "an integer" if kind is int else "a number"
    span = f"[{int(lo)}, {int(hi)}]" if kind is int else f"[{lo:g}, {hi:g}]"
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadRequest(422, f"field '{name}' must be {what}, got {type(v).__name__}")
    if isinstance(v, str) and len(v) > MAX_NUMBER_CHARS:
        raise BadRequest(422, f"field '{name}' has {len(v)} characters; send {what} in {span}")
    if isinstance(v, int) and v.bit_length() > 64:  # a JSON integer of hundreds of digits
        raise BadRequest(422, f"field '{name}' is out of range; send {what} in {span}")
    try:
        x = float(v)
        if kind is int:
            if not x.is_integer():
                raise ValueError
            x = int(x)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(422, f"field '{name}' must be {what}, got {str(v)[:40]!r}") from None
    if name == "max_seconds" and x <= 0:
        raise BadRequest(422, f"max_seconds {str(v)[:40]} must be a positive number of seconds")
    if not (math.isfinite(x) and lo <= x <= hi):
        raise BadRequest(
            422,
            f"field '{name}' is {str(v)[:40]}; send {what} in {span}"
            + (" (this server's deadline, --max-seconds)" if name == "max_seconds" else ""),
        )
    return x
