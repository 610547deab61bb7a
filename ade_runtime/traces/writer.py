"""Append-only writer of edit-trace datasets (``docs/trace-format-v1.md``).

``TraceWriter(root)`` writes shards ``<prefix>-00000.jsonl``, ``<prefix>-00001.jsonl``, ... in
``root`` itself (so image paths are relative to ``root``) and images under it:

- a record is all or nothing: ``write(record, images={rel: image})`` checks the record (every
  rule of the format, plus the writer's ``RecordLimits``) and encodes its images in memory
  (``prepare.py``), then claims its id (unique in the dataset across restarts and processes,
  ``claims.py``), links the images into place without overwriting anything (``staging.py``) and
  appends the line; a refusal at any step raises ``RecordRefused`` (``DuplicateRecordId`` for an
  id in use) and leaves no line, no image and no claim behind. The images' SHA-256 go into
  ``meta.ade.image_sha256``, so ``ade-traces validate --decode`` detects an image replaced later;
- each line is serialised with ``allow_nan=False`` and appended with ``os.write`` on an
  ``O_APPEND`` descriptor, then fsynced, so a crash loses at most the line being written, which
  the reader reports as ``truncated_line``;
- shards rotate by size and are created with ``O_EXCL``: an existing shard is never
  overwritten or appended to, so reopening a directory continues in a new shard;
- ``write_image`` (the older two-step way: images first, record next) writes one image at once
  to a temporary file, fsynced and moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InputError, TraceError
from .claims import IdRegistry, RecordRefused
from .images import ALLOWED_FORMATS, ImageChecker, safe_join
from .prepare import RecordLimits, prepare_record
from .records import EditRecord
from .staging import encode_image, file_mode, fsync_dir, place_images, undo

__all__ = ["TraceWriter"]

_WRITE_CHUNK = 1 << 20  # large records go out in several writes; the reader copes with any cut


class TraceWriter:
    """Context manager appending validated records to a trace dataset directory.

    ``images``: how the images a record names (and that ``write`` does not place itself) are
    checked (``"header"``: exist and are PNG/JPEG/WebP; ``"none"``: path safety only).
    ``fsync=False`` skips fsync for bulk generation where speed matters more than durability.
    ``check_existing_ids=False`` is for a fresh directory only this writer writes into: ids are
    then kept unique in memory only (no shard scan, no claims on disk).
    Not thread-safe: one writer per thread (several writers, in any processes, may share a root).
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
        limits: RecordLimits | None = None,
    ):
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
            raise InputError(f"TraceWriter prefix {prefix!r} must be a plain file-name stem like 'traces'")
        if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes <= 0:
            raise InputError(f"TraceWriter max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
        if images not in ("none", "header"):
            raise InputError(f"TraceWriter images={images!r} must be 'none' or 'header'")
        if limits is not None and not isinstance(limits, RecordLimits):
            raise InputError(f"TraceWriter limits must be a RecordLimits, got {type(limits).__name__}")
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
        self.limits = limits if limits is not None else RecordLimits()
        self._checker = ImageChecker(self.root, images)
        self._pattern = re.compile(re.escape(prefix) + r"-(\d{5,})\.jsonl(\.gz)?")
        self._next_index = self._first_free_index()
        self._ids = IdRegistry(self.root, shared=check_existing_ids)
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
        """Close the current shard and release the ids claimed but never written (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._closed:
            self._ids.close()
        self._closed = True

    @property
    def stale_claims_released(self) -> int:
        """Claims of writers that stopped before writing their record, released by this writer."""
        return self._ids.stale_released

    # -- ids ---------------------------------------------------------------------------------------

    def claim(self, rid: str) -> None:
        """Reserve ``rid`` before producing its record (``DuplicateRecordId`` when it is in use).

        The claim lasts until ``write`` writes the record, ``release`` or ``close``; a refused
        ``write`` releases it too.
        """
        self._check_open()
        if not isinstance(rid, str) or not rid:
            raise RecordRefused(
                f"a trace record id must be a non-empty string, got {rid!r}", "wrong_type", "id"
            )
        self._ids.claim(rid)

    def release(self, rid: str) -> None:
        """Give back this writer's claim on ``rid`` when no record will be written for it."""
        self._ids.release(rid)

    # -- records -----------------------------------------------------------------------------------

    def check(self, record: EditRecord | dict[str, Any], images: dict[str, Any] | None = None) -> None:
        """Everything ``write`` checks before touching the disk (not the id's uniqueness); raises
        ``RecordRefused``. A server calls it before any work, with a draft of the record."""
        self._check_open()
        prepare_record(
            record, images, root=self.root, checker=self._checker, limits=self.limits, encode=False
        )

    def write(self, record: EditRecord | dict[str, Any], images: dict[str, Any] | None = None) -> None:
        """Write ``record`` and the ``images`` it names (``{relative path: PIL image | array | bytes}``).

        All or nothing: ``RecordRefused`` (``DuplicateRecordId`` for an id in use) before any
        file is touched, and after a failure while writing (an image path taken by other content,
        a full disk) the images placed so far are removed and the id's claim released.
        """
        self._check_open()
        obj, line, staged = prepare_record(
            record, images, root=self.root, checker=self._checker, limits=self.limits
        )
        rid = obj["id"]
        if rid not in self._ids.pending:
            self._ids.claim(rid)
        files: list[Path] = []
        try:
            hashes = obj["meta"]["ade"]["image_sha256"] if staged else {}
            planned = {rel: hashes[rel] for rel, (target, _, _) in staged.items() if not target.exists()}
            self._ids.note_images(rid, planned)  # a crash from here on: recovery removes these images
            files, dirs = place_images(staged, self.fsync)
            self._append(line, rid)
        except BaseException:
            if files:
                undo(files, dirs)
            self._ids.release(rid)
            raise
        for target, _, _ in staged.values():
            self._checker.forget(target)
        self._ids.commit(rid)
        self.records_written += 1

    def _check_open(self) -> None:
        if self._closed:
            raise TraceError(f"TraceWriter for {self.root} is closed; open a new one to write more records")

    def _append(self, line: bytes, rid: str) -> None:
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
            raise TraceError(
                f"writing record {rid!r} to {self._shard} failed ({exc}); it was not (fully) written, "
                "readers will report that line as truncated_line; later records go to a new shard"
            ) from exc
        self._shard_bytes += len(line)

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
            fsync_dir(self.root)

    def _first_free_index(self) -> int:
        taken = [int(m.group(1)) for p in self.root.iterdir() if (m := self._pattern.fullmatch(p.name))]
        return max(taken) + 1 if taken else 0

    # -- images ------------------------------------------------------------------------------------

    def write_image(self, rel_path: str, image: Any, format: str = "PNG") -> str:
        """Atomically write an image (PIL image, uint8 array HxW / HxWx3 / HxWx4, or encoded bytes) now.

        Returns the normalised relative path to put in the record. Bytes must already be a
        PNG, JPEG or WebP file; ``format`` applies to PIL images and arrays. An existing file is
        replaced: prefer ``write(record, images=...)``, which never overwrites and writes nothing
        for a refused record.
        """
        fmt = format.upper().replace("JPG", "JPEG")
        if fmt not in ALLOWED_FORMATS:
            raise InputError(f"write_image format {format!r} must be one of {ALLOWED_FORMATS}")
        try:
            full = safe_join(self.root, rel_path)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        try:
            data = encode_image(image, fmt, rel_path)
        except InputError as exc:
            raise InputError(f"write_image {exc}") from exc
        full.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{full.name}.", suffix=".tmp", dir=full.parent)
        os.fchmod(fd, file_mode())  # images readable like the shards (0644 under umask 022)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, full)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self.fsync:
            fsync_dir(full.parent)
        self._checker.forget(full)
        return full.relative_to(Path(os.path.normpath(os.path.abspath(self.root)))).as_posix()
