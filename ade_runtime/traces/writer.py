"""Append-only writer of edit-trace datasets (``docs/trace-format-v1.md``).

``TraceWriter(root)`` writes shards ``<prefix>-00000.jsonl``, ``<prefix>-00001.jsonl``, ... in
``root`` itself (so image paths are relative to ``root``) and images under it:

- a record is all or nothing: ``write(record, images={rel: image})`` checks the record (every
  rule of the format, plus the writer's ``RecordLimits``) and encodes its images in memory, then
  claims its id (unique in the dataset across restarts and processes, ``claims.py``), links the
  images into place without overwriting anything (``staging.py``) and appends the line; a
  refusal at any step raises ``RecordRefused`` (``DuplicateRecordId`` for an id in use) and leaves
  no line, no image and no claim behind. The images' SHA-256 go into ``meta.ade.image_sha256``,
  so ``ade-traces validate --decode`` detects an image replaced later;
- each line is serialised with ``allow_nan=False`` and appended with ``os.write`` on an
  ``O_APPEND`` descriptor, then fsynced, so a crash loses at most the line being written, which
  the reader reports as ``truncated_line``;
- shards rotate by size and are created with ``O_EXCL``: an existing shard is never
  overwritten or appended to, so reopening a directory continues in a new shard;
- ``write_image`` (the older two-step way: images first, record next) writes one image at once
  to a temporary file, fsynced and moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, TraceError
from .claims import DuplicateRecordId, IdRegistry, RecordRefused
from .images import ALLOWED_FORMATS, ImageChecker, lexical_problem, safe_join
from .reader import DEFAULT_MAX_LINE_BYTES
from .records import EditRecord
from .staging import SUFFIX_FORMATS, encode_image, file_mode, fsync_dir, place_images, undo
from .validate import validate_record

__all__ = ["DuplicateRecordId", "RecordLimits", "RecordRefused", "TraceWriter", "file_mode"]

_WRITE_CHUNK = 1 << 20  # large records go out in several writes; the reader copes with any cut


@dataclass(frozen=True)
class RecordLimits:
    """Sizes a writer refuses (``RecordRefused``) before any work; None = no limit.

    ``max_record_bytes`` is the serialised line (UTF-8, without its newline); the default is the
    reader's line cap, above which a line would be rejected as ``line_too_long`` anyway.
    """

    max_record_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_id_chars: int | None = None
    max_instruction_chars: int | None = None
    max_category_chars: int | None = None
    max_backbone_chars: int | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is None and name != "max_record_bytes":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"RecordLimits.{name} must be a positive int, got {value!r}")
        if self.max_record_bytes > DEFAULT_MAX_LINE_BYTES:
            raise InputError(
                f"RecordLimits.max_record_bytes {self.max_record_bytes} exceeds the reader's line cap "
                f"{DEFAULT_MAX_LINE_BYTES}: such lines would be rejected as line_too_long"
            )

    def check_fields(self, obj: dict) -> None:
        for key, cap in (
            ("id", self.max_id_chars),
            ("instruction", self.max_instruction_chars),
            ("category", self.max_category_chars),
            ("backbone", self.max_backbone_chars),
        ):
            v = obj.get(key)
            if cap is not None and isinstance(v, str) and len(v) > cap:
                raise RecordRefused(
                    f"refusing to write a trace record: {key} has {len(v)} characters, over the limit of "
                    f"{cap}; shorten it [too_long]",
                    "too_long",
                    key,
                )


class _StagedChecker:
    """The writer's image checker, with the images of the record being written counted as present."""

    def __init__(self, inner: ImageChecker, staged: set[str]):
        self.inner, self.staged, self.mode = inner, staged, inner.mode

    def check(self, base_dir: Any, rel: object) -> tuple[str, str] | None:
        if isinstance(rel, str) and rel in self.staged:
            return None  # already checked by safe_join and encoded in memory
        return self.inner.check(base_dir, rel)


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
        self._prepare(record, images, encode=False)

    def write(self, record: EditRecord | dict[str, Any], images: dict[str, Any] | None = None) -> None:
        """Write ``record`` and the ``images`` it names (``{relative path: PIL image | array | bytes}``).

        All or nothing: ``RecordRefused`` (``DuplicateRecordId`` for an id in use) before any
        file is touched, and after a failure while writing (an image path taken by other content,
        a full disk) the images placed so far are removed and the id's claim released.
        """
        self._check_open()
        obj, line, staged = self._prepare(record, images)
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

    def _prepare(
        self, record: EditRecord | dict[str, Any], images: dict[str, Any] | None, encode: bool = True
    ) -> tuple[dict, bytes, dict[str, tuple[Path, bytes, str]]]:
        """(record object with image hashes, its line, {rel: (target, bytes, field)}); no disk writes.
        ``encode=False`` checks the images' paths only (a draft: no encoding, no hashes)."""
        obj = record.to_json() if isinstance(record, EditRecord) else record
        if not isinstance(obj, dict):
            raise RecordRefused(
                f"a trace record must be a dict or EditRecord, got {type(obj).__name__}",
                "not_an_object",
                None,
            )
        self.limits.check_fields(obj)
        images = dict(images or {})
        targets = {rel: self._target(rel) for rel in images}
        checker = _StagedChecker(self._checker, set(images))
        problems = validate_record(obj, base_dir=self.root, checker=checker)  # type: ignore[arg-type]
        if problems:
            p = problems[0]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise RecordRefused(
                f"refusing to write an invalid trace record: {p.message} [{p.reason}]{more}",
                p.reason,
                p.field,
            )
        fields = _image_fields(obj)
        staged: dict[str, tuple[Path, bytes, str]] = {}
        for rel, image in images.items():
            if rel not in fields:
                raise RecordRefused(
                    f"image {rel!r} is not named by record {obj['id']!r}; pass only the images it names "
                    "[image_not_named]",
                    "image_not_named",
                    None,
                )
            fmt = SUFFIX_FORMATS.get(os.path.splitext(rel)[1].lower())
            if fmt is None:
                raise RecordRefused(
                    f"{fields[rel]} ({rel!r}) must end in .png, .jpg, .jpeg or .webp [bad_image]",
                    "bad_image",
                    fields[rel],
                )
            if not encode:
                continue
            try:
                data = encode_image(image, fmt, rel)
            except InputError as exc:
                raise RecordRefused(f"{fields[rel]}: {exc} [bad_image]", "bad_image", fields[rel]) from exc
            staged[rel] = (targets[rel], data, fields[rel])
        if staged:
            obj = _with_hashes(
                obj, {rel: hashlib.sha256(data).hexdigest() for rel, (_, data, _) in staged.items()}
            )
        try:
            line = json.dumps(obj, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise RecordRefused(
                f"record {obj['id']!r} is not JSON-serialisable: {exc}; use plain JSON types",
                "wrong_type",
                None,
            ) from exc
        if len(line) > self.limits.max_record_bytes:
            raise RecordRefused(
                f"record {obj['id']!r} is {len(line)} bytes as JSON, over the limit of "
                f"{self.limits.max_record_bytes}; shorten its strings or log fewer attempts [record_too_large]",
                "record_too_large",
                None,
            )
        return obj, line + b"\n", staged

    def _target(self, rel: object) -> Path:
        """Where an image ``write`` places goes; the path must be relative, normalised and inside."""
        problem = lexical_problem(rel)
        if problem is not None:
            raise RecordRefused(f"image path {rel!r} {problem[1]} [{problem[0]}]", problem[0], None)
        assert isinstance(rel, str)
        try:
            full = safe_join(self.root, rel)
        except ValueError as exc:
            raise RecordRefused(f"{exc} [path_escape]", "path_escape", None) from exc
        norm = full.relative_to(os.path.normpath(os.path.abspath(self.root))).as_posix()
        if norm != rel:
            raise RecordRefused(
                f"image path {rel!r} is not in normal form; write it as {norm!r} [bad_path]", "bad_path", None
            )
        return full

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


def _image_fields(obj: dict) -> dict[str, str]:
    """{image path: the first field naming it} of a valid record."""
    fields = {obj["source_image"]: "source_image"}
    for i, a in enumerate(obj["attempts"]):
        if isinstance(a.get("image"), str):
            fields.setdefault(a["image"], f"attempts[{i}].image")
    return fields


def _with_hashes(obj: dict, hashes: dict[str, str]) -> dict:
    """``obj`` (not modified) with ``hashes`` merged into ``meta.ade.image_sha256``."""
    meta = obj.get("meta")
    meta = {} if meta is None else meta
    ade = meta.get("ade", {})
    if not isinstance(ade, dict):
        raise RecordRefused(
            f"meta.ade must be an object to hold the image hashes, got {type(ade).__name__}; "
            "ADE keeps its own data there [wrong_type]",
            "wrong_type",
            "meta.ade",
        )
    table = ade.get("image_sha256")
    table = dict(table) if isinstance(table, dict) else {}
    table.update(hashes)
    return {**obj, "meta": {**meta, "ade": {**ade, "image_sha256": table}}}
