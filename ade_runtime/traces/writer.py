"""Append-only writer of edit-trace datasets (``docs/trace-format-v1.md``).

``TraceWriter(root)`` writes shards ``<prefix>-00000.jsonl``, ``<prefix>-00001.jsonl``, ... in
``root`` itself (so image paths are relative to ``root``) and images under it:

- every record is validated before it is written (an invalid record raises ``InputError``
  naming the field) and serialised on one line with ``allow_nan=False``;
- a record is appended with ``os.write`` on an ``O_APPEND`` descriptor, then fsynced, so a
  crash loses at most the line being written, which the reader reports as ``truncated_line``;
- shards rotate by size and are created with ``O_EXCL``: an existing shard is never
  overwritten or appended to, so reopening a directory continues in a new shard;
- images are written to a temporary file, fsynced and moved into place with ``os.replace``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InputError, TraceError
from .images import ALLOWED_FORMATS, ImageChecker, check_image_file, safe_join
from .reader import DEFAULT_MAX_LINE_BYTES, find_shards
from .records import EditRecord
from .validate import validate_record

_WRITE_CHUNK = 1 << 20  # large records go out in several writes; the reader copes with any cut


class TraceWriter:
    """Context manager appending validated records to a trace dataset directory.

    ``images``: how the images a record names are checked before it is written
    (``"header"``: exist and are PNG/JPEG/WebP; ``"none"``: path safety only).
    ``fsync=False`` skips fsync for bulk generation where speed matters more than durability.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        prefix: str = "traces",
        max_shard_bytes: int = 64 << 20,
        fsync: bool = True,
        *,
        images: str = "header",
        check_existing_ids: bool = True,
    ):
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
            raise InputError(f"TraceWriter prefix {prefix!r} must be a plain file-name stem like 'traces'")
        if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes <= 0:
            raise InputError(f"TraceWriter max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
        if images not in ("none", "header"):
            raise InputError(f"TraceWriter images={images!r} must be 'none' or 'header'")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TraceError(f"cannot create trace directory {self.root}: {exc}") from exc
        if not self.root.is_dir():
            raise TraceError(f"trace directory {self.root} is not a directory")
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self.fsync = fsync
        self._checker = ImageChecker(self.root, images)
        self._pattern = re.compile(re.escape(prefix) + r"-(\d{5,})\.jsonl(\.gz)?")
        self._next_index = self._first_free_index()
        self._ids: set[str] = self._existing_ids() if check_existing_ids else set()
        self._fd: int | None = None
        self._shard: Path | None = None
        self._shard_bytes = 0
        self._closed = False
        self.records_written = 0
        self.shards_written: list[Path] = []

    # -- context manager ---------------------------------------------------------------------------

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the current shard (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._closed = True

    # -- records -----------------------------------------------------------------------------------

    def write(self, record: EditRecord | dict[str, Any]) -> None:
        """Validate ``record`` and append it as one line (flush + fsync unless ``fsync=False``)."""
        if self._closed:
            raise TraceError(f"TraceWriter for {self.root} is closed; open a new one to write more records")
        obj = record.to_json() if isinstance(record, EditRecord) else record
        problems = validate_record(obj, base_dir=self.root, checker=self._checker, seen_ids=self._ids)
        if problems:
            p = problems[0]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise InputError(f"refusing to write an invalid trace record: {p.message} [{p.reason}]{more}")
        try:
            line = json.dumps(obj, allow_nan=False, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            self._ids.discard(obj["id"])
            raise InputError(
                f"record {obj['id']!r} is not JSON-serialisable: {exc}; use plain JSON types"
            ) from exc
        if self._fd is None or (
            self._shard_bytes > 0 and self._shard_bytes + len(line) > self.max_shard_bytes
        ):
            self._open_next_shard()
        assert self._fd is not None
        view = memoryview(line)
        try:
            while view:
                n = os.write(self._fd, view[:_WRITE_CHUNK])
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # a partial line may be on disk: end this shard there so the next record starts a clean line
            os.close(self._fd)
            self._fd = None
            self._ids.discard(obj["id"])
            raise TraceError(
                f"writing record {obj['id']!r} to {self._shard} failed ({exc}); it was not (fully) written, "
                "readers will report that line as truncated_line; later records go to a new shard"
            ) from exc
        self._shard_bytes += len(line)
        self.records_written += 1

    def _open_next_shard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        while True:
            path = self.root / f"{self.prefix}-{self._next_index:05d}.jsonl"
            self._next_index += 1
            if (self.root / (path.name + ".gz")).exists():
                continue
            try:
                # O_EXCL: never overwrite a shard, even one another writer created a moment ago.
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:
                continue
        self._shard = path
        self._shard_bytes = 0
        self.shards_written.append(path)
        if self.fsync:
            _fsync_dir(self.root)

    def _first_free_index(self) -> int:
        taken = [int(m.group(1)) for p in self.root.iterdir() if (m := self._pattern.fullmatch(p.name))]
        return max(taken) + 1 if taken else 0

    def _existing_ids(self) -> set[str]:
        """Ids of records already in the directory's shards, so a reopened writer keeps ids unique."""
        ids: set[str] = set()
        try:
            shards = find_shards(self.root)
        except TraceError:
            return ids
        from .reader import _lines, _open  # the reader's bounded line iterator, not a full validation

        for shard in shards:
            try:
                with _open(shard) as f:
                    for _, raw, _ in _lines(f, DEFAULT_MAX_LINE_BYTES):
                        try:
                            obj = json.loads(raw) if raw else None
                        except (ValueError, RecursionError):
                            continue
                        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                            ids.add(obj["id"])
            except (OSError, EOFError):
                continue  # an unreadable shard is the reader's to report, not the writer's
        return ids

    # -- images ------------------------------------------------------------------------------------

    def write_image(self, rel_path: str, image: Any, format: str = "PNG") -> str:
        """Atomically write an image (PIL image, uint8 array HxW / HxWx3 / HxWx4, or encoded bytes).

        Returns the normalised relative path to put in the record. Bytes must already be a
        PNG, JPEG or WebP file; ``format`` applies to PIL images and arrays.
        """
        fmt = format.upper().replace("JPG", "JPEG")
        if fmt not in ALLOWED_FORMATS:
            raise InputError(f"write_image format {format!r} must be one of {ALLOWED_FORMATS}")
        try:
            full = safe_join(self.root, rel_path)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        data = _encode(image, fmt, rel_path)
        full.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{full.name}.", suffix=".tmp", dir=full.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            if isinstance(image, (bytes, bytearray, memoryview)):
                problem = check_image_file(tmp, decode=False, label=rel_path)
                if problem is not None:
                    raise InputError(
                        f"write_image {rel_path!r}: the given bytes are not a valid PNG, JPEG or WebP file "
                        f"({problem[0]}); pass a PIL image or an encoded image file"
                    )
            os.replace(tmp, full)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self.fsync:
            _fsync_dir(full.parent)
        self._checker.forget(full)
        return full.relative_to(Path(os.path.normpath(os.path.abspath(self.root)))).as_posix()


def _encode(image: Any, fmt: str, rel_path: str) -> bytes:
    from PIL import Image

    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if not isinstance(image, Image.Image):
        import numpy as np

        if not isinstance(image, np.ndarray):
            raise InputError(
                f"write_image {rel_path!r}: image must be a PIL image, a numpy uint8 array or bytes, "
                f"got {type(image).__name__}"
            )
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (3, 4))
        ):
            raise InputError(
                f"write_image {rel_path!r}: array must be uint8 HxW, HxWx3 or HxWx4, got {image.dtype} "
                f"{tuple(image.shape)}; convert with (x * 255).round().astype(np.uint8)"
            )
        image = Image.fromarray(image)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha channel
    buf = io.BytesIO()
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    if fmt == "PNG" and texts:
        # PIL drops an image's text chunks on save unless they are passed back; keep them (provenance,
        # the testbed's scene) so a logged image carries what the original did.
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for key, value in texts.items():
            info.add_text(key, value, zip=len(value) > 256)
        image.save(buf, format=fmt, pnginfo=info)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
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
