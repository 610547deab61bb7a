"""Images a writer places together with their record: encoded in memory, linked in without overwriting.

``encode_image`` turns a PIL image, a uint8 array or encoded bytes into file bytes (checked when
they come as bytes). ``place_images`` writes each to a temporary file beside its target, fsyncs
it, then ``os.link``s it to the target name: the link fails when the name exists, so an image of
another record is never overwritten (an existing file with the very same bytes is accepted: a
retry after a crash). On any failure every file and folder it created is removed again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..images import image_bytes
from .claims import RecordRefused
from .images import ALLOWED_FORMATS, check_image_bytes

SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def file_mode(base: int = 0o666) -> int:
    """``base`` masked by the process umask: what ``open()`` gives (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def encode_image(image: Any, fmt: str, rel_path: str) -> bytes:
    """File bytes of ``image`` (PIL image, uint8 array HxW / HxWx3 / HxWx4, or encoded bytes) in ``fmt``."""
    from PIL import Image

    if fmt not in ALLOWED_FORMATS:
        raise InputError(f"image {rel_path!r}: format {fmt!r} must be one of {ALLOWED_FORMATS}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        problem = check_image_bytes(data, decode=False, label=rel_path)
        if problem is not None:
            raise InputError(
                f"image {rel_path!r}: the given bytes are not a valid PNG, JPEG or WebP file "
                f"({problem[0]}); pass a PIL image or an encoded image file"
            )
        return data
    if not isinstance(image, Image.Image):
        import numpy as np

        if not isinstance(image, np.ndarray):
            raise InputError(
                f"image {rel_path!r}: must be a PIL image, a numpy uint8 array or bytes, "
                f"got {type(image).__name__}"
            )
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (3, 4))
        ):
            raise InputError(
                f"image {rel_path!r}: array must be uint8 HxW, HxWx3 or HxWx4, got {image.dtype} "
                f"{tuple(image.shape)}; convert with (x * 255).round().astype(np.uint8)"
            )
        image = Image.fromarray(image)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha channel
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    if fmt == "PNG" and texts:
        # PIL drops an image's text chunks on save unless they are passed back; keep them (provenance,
        # the testbed's scene) so a logged image carries what the original did.
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for key, value in texts.items():
            info.add_text(key, value, zip=len(value) > 256)
        return image_bytes(image, fmt, pnginfo=info)
    return image_bytes(image, fmt)


def place_images(staged: dict[str, tuple[Path, bytes, str]], fsync: bool) -> tuple[list[Path], list[Path]]:
    """Link every staged ``{rel: (target, data, field)}`` into place; (new files, new folders) for undo.

    RecordRefused ``image_exists`` when a target holds other bytes; on any error nothing stays.
    """
    created_files: list[Path] = []
    created_dirs: list[Path] = []
    try:
        for rel, (target, data, field) in staged.items():
            created_dirs.extend(_make_dirs(target.parent))
            if _link_new(target, data, fsync):
                created_files.append(target)
            elif not _same_bytes(target, data):
                raise RecordRefused(
                    f"{field} ({rel!r}) already exists with other content; the trace writer never "
                    "overwrites an image (another record may own it): use another path or remove the file",
                    "image_exists",
                    field,
                )
        if fsync:
            for folder in {t.parent for t, _, _ in staged.values()} | {d.parent for d in created_dirs}:
                fsync_dir(folder)
    except BaseException:
        undo(created_files, created_dirs)
        raise
    return created_files, created_dirs


def undo(files: list[Path], dirs: list[Path]) -> None:
    """Remove files, then the folders (deepest first) that were created for them, if empty."""
    for f in files:
        with contextlib.suppress(OSError):
            os.unlink(f)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones this call created, outermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            pass
    return made


def _link_new(target: Path, data: bytes, fsync: bool) -> bool:
    """Write ``data`` to a new file ``target`` (complete before it is visible); False when it exists."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, file_mode())  # images readable like the shards (0644 under umask 022)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        try:
            os.link(tmp, target)  # atomic, and never replaces an existing name
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return _create_new(target, data, fsync)  # a filesystem without hard links
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_new(target: Path, data: bytes, fsync: bool) -> bool:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(0o666))
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return True


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def fsync_dir(path: Path) -> None:
    """Make a new directory entry (shard, renamed image) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself was fsynced
    finally:
        os.close(fd)
