"""Image path safety and image checks for trace datasets (``docs/trace-format-v1.md``, Layout).

A record names images by paths relative to its shard's directory. Before anyone opens
such a path it must stay inside the dataset root: no absolute paths, no ``..`` climbing
out, no symlink resolving outside. Then, depending on the mode, the file is checked:

- ``"none"``: only the lexical checks above (no filesystem access at all);
- ``"header"``: the file exists, is a regular file and PIL reads a PNG/JPEG/WebP header
  (``Image.open`` parses the header without decoding pixels) of at most ``max_pixels``;
- ``"decode"``: ``"header"`` plus a full pixel decode.

Results are cached per normalised absolute path for the lifetime of the checker, so a
dataset whose records share images checks each file once. Decompression bombs (a tiny
file declaring huge dimensions) are refused from the header, before any pixel is decoded;
this follows PIL's own guard (``PIL/Image.py: _decompression_bomb_check``) with a lower cap.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_MODES = ("none", "header", "decode")
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 64_000_000
_CACHE_LIMIT = 500_000

_DRIVE = re.compile(r"^[A-Za-z]:")


def lexical_problem(rel: object) -> tuple[str, str] | None:
    """(reason, detail) when ``rel`` is not a usable relative path string, else None (no filesystem)."""
    if not isinstance(rel, str):
        return "wrong_type", f"must be a relative path string, got {type(rel).__name__}"
    if not rel:
        return "bad_path", "is an empty path; name the image file relative to the shard's directory"
    if "\x00" in rel:
        return "bad_path", "contains a NUL character; write a plain relative path"
    # Windows drive letters and UNC/backslash roots are absolute on the machine that wrote them.
    if rel.startswith(("/", "\\")) or _DRIVE.match(rel):
        return "absolute_path", f"is absolute ({rel!r}); write it relative to the shard's directory"
    return None


class ImageChecker:
    """Checks image paths named by records against one dataset root, with a per-path cache."""

    def __init__(
        self, dataset_root: str | os.PathLike, mode: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        if mode not in IMAGE_MODES:
            raise ValueError(f"images={mode!r} is not one of {IMAGE_MODES}")
        if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels <= 0:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        self.mode = mode
        self.max_pixels = max_pixels
        self.root = os.path.normpath(os.path.abspath(dataset_root))
        self._real_root = os.path.realpath(self.root)
        self._cache: dict[str, tuple[str, str] | None] = {}
        self._fast: dict[tuple[Any, Any], tuple[str, str] | None] = {}
        self._digests: dict[str, str] = {}

    def check(self, base_dir: str | os.PathLike, rel: object) -> tuple[str, str] | None:
        """(reason, detail) for the image ``rel`` named from ``base_dir``, or None when it is fine.

        ``detail`` completes a sentence that starts with the field name, e.g.
        ``"source_image " + detail``.
        """
        fast_key = (base_dir, rel)
        try:
            return self._fast[fast_key]  # the common case: the same (shard dir, path) seen before
        except (KeyError, TypeError):
            pass
        problem = lexical_problem(rel)
        if problem is not None:
            return problem
        assert isinstance(rel, str)
        full = os.path.abspath(os.path.join(os.fspath(base_dir), rel))  # abspath also normalises
        cached = self._cache.get(full, False)
        if cached is not False:
            self._fast[fast_key] = cached  # type: ignore[assignment]
            return cached  # type: ignore[return-value]
        result = self._check_full(full, rel)
        if len(self._cache) >= _CACHE_LIMIT:
            # bounded memory on datasets of millions of distinct images; shared ones re-enter at once
            self._cache.clear()
            self._fast.clear()
        self._cache[full] = result
        self._fast[fast_key] = result
        return result

    def digest(self, base_dir: str | os.PathLike, rel: str) -> str | None:
        """SHA-256 (hex) of the image ``rel`` named from ``base_dir``, cached; None when unreadable."""
        full = os.path.abspath(os.path.join(os.fspath(base_dir), rel))
        cached = self._digests.get(full)
        if cached is None:
            cached = file_sha256(full)
            if cached is not None:
                if len(self._digests) >= _CACHE_LIMIT:
                    self._digests.clear()
                self._digests[full] = cached
        return cached

    def forget(self, path: str | os.PathLike) -> None:
        """Drop a cached result (a writer calls this after replacing an image file)."""
        self._cache.pop(os.path.normpath(os.path.abspath(path)), None)
        self._digests.pop(os.path.normpath(os.path.abspath(path)), None)
        self._fast.clear()  # aliases of the path may be keyed there

    def _check_full(self, full: str, rel: str) -> tuple[str, str] | None:
        if not _inside(full, self.root):
            return "path_escape", f"({rel!r}) leaves the dataset directory; keep images inside it"
        if self.mode == "none":
            return None
        real = os.path.realpath(full)
        if not _inside(real, self._real_root):
            return "path_escape", f"({rel!r}) is a symlink resolving outside the dataset directory"
        if not os.path.exists(real):
            return "missing_image", f"({rel!r}) does not exist; write the image or fix the path"
        if not os.path.isfile(real):
            return "unreadable_image", f"({rel!r}) is not a regular file"
        return check_image_file(real, decode=self.mode == "decode", max_pixels=self.max_pixels, label=rel)


def check_image_bytes(
    data: bytes, *, decode: bool, max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "image"
) -> tuple[str, str] | None:
    """``check_image_file`` for an encoded image held in memory."""
    return _check_image(io.BytesIO(data), data[:30], decode, max_pixels, label)


def check_image_file(
    path: str | os.PathLike, *, decode: bool, max_pixels: int = DEFAULT_MAX_PIXELS, label: str | None = None
) -> tuple[str, str] | None:
    """Open an image file's header (and decode it when asked); (reason, detail) or None."""
    label = label if label is not None else os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(30)
    except OSError as exc:
        return "unreadable_image", f"({label!r}) cannot be opened: {exc}"
    return _check_image(path, head, decode, max_pixels, label)


def _check_image(
    source: Any, head: bytes, decode: bool, max_pixels: int, label: str
) -> tuple[str, str] | None:
    declared = _webp_canvas(head)
    if declared is not None and declared[0] * declared[1] > max_pixels:
        # PIL's WebP opener allocates the canvas at open(): refuse from the first 30 bytes instead.
        return _too_large(label, *declared, max_pixels)
    try:
        with warnings.catch_warnings():
            # PIL warns (and above 2x its cap raises) on huge images; our own cap below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                fmt = im.format
                width, height = im.size
                if fmt not in ALLOWED_FORMATS:
                    return (
                        "unsupported_image_format",
                        f"({label!r}) is {fmt}; only PNG, JPEG and WebP are accepted, convert it",
                    )
                if width * height > max_pixels:
                    return _too_large(label, width, height, max_pixels)
                if decode:
                    im.load()
    except Image.DecompressionBombError as exc:
        return "image_too_large", f"({label!r}) is refused as a decompression bomb: {exc}"
    except Image.UnidentifiedImageError:
        return "corrupt_image", f"({label!r}) is not a readable PNG/JPEG/WebP image; rewrite the file"
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        # PIL signals truncated/corrupt data with several exception types depending on the plugin.
        return (
            "corrupt_image",
            f"({label!r}) cannot be {'decoded' if decode else 'read'}: {exc}; rewrite the file",
        )
    return None


def file_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 (hex) of a file's bytes, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _too_large(label: str, width: int, height: int, max_pixels: int) -> tuple[str, str]:
    return (
        "image_too_large",
        f"({label!r}) declares {width}x{height} = {width * height} pixels, over the cap of "
        f"{max_pixels} (decompression-bomb guard); store a smaller image",
    )


def _webp_canvas(head: bytes) -> tuple[int, int] | None:
    """Canvas size declared by a WebP file's first 30 bytes (as PIL/WebPImagePlugin.py: _get_size)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def safe_join(root: str | os.PathLike, rel: str) -> Path:
    """Absolute path of ``rel`` under ``root``; ValueError when it is absolute or climbs out of ``root``."""
    problem = lexical_problem(rel)
    if problem is not None:
        raise ValueError(f"image path {rel!r} {problem[1]}")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, rel))
    if not _inside(full, base) or full == base:
        raise ValueError(f"image path {rel!r} leaves the dataset directory {base}; keep images inside it")
    return Path(full)
