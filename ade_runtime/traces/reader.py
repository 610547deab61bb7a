"""Streaming reader of edit-trace datasets (``docs/trace-format-v1.md``, "What a reader must do").

``TraceDataset(root)`` walks the ``*.jsonl`` / ``*.jsonl.gz`` shards under ``root`` in sorted
order and accounts for every line: each one yields either a valid ``EditRecord`` or a
``Reject`` (shard, line, id, reason, field, message). It never raises on content (binary
garbage, invalid UTF-8, truncated lines or gzip streams, over-long lines, bad images) and
never holds more than one line (capped at ``max_line_bytes``) of a shard in memory.

Blank lines are not records, yet the spec says every line ends up valid or rejected: they
are rejected with reason ``empty_line``, so ``valid + rejected == lines`` always holds (a
shard-level failure such as a truncated gzip stream adds one reject for the shard).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import TraceError
from .images import DEFAULT_MAX_PIXELS, IMAGE_MODES, ImageChecker
from .records import EditRecord
from .validate import parse_record, record_id, summarize

DEFAULT_MAX_LINE_BYTES = 16 << 20
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz")
_DRAIN = 1 << 20


@dataclass(frozen=True)
class Reject:
    """A line (or a shard's unreadable rest) that is not a valid record, and why."""

    shard: str
    line: int
    id: str | None
    reason: str
    field: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_REJECTS_SHOWN = 20


def reject_lines(rejects: list[Reject], what: str = "skipped") -> list[str]:
    """Lines reporting bad records like ``ade-traces validate``: shard, line, id, reason (first 20)."""
    if not rejects:
        return []
    lines = [f"{len(rejects)} bad record(s) {what} (check them with `ade-traces validate`):"]
    for r in rejects[:MAX_REJECTS_SHOWN]:
        lines.append(f"  {r.shard}:{r.line} id={r.id} {r.reason}: {r.message}")
    if len(rejects) > MAX_REJECTS_SHOWN:
        lines.append(f"  ... and {len(rejects) - MAX_REJECTS_SHOWN} more")
    return lines


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def find_shards(root: str | os.PathLike) -> list[Path]:
    """Shard files under ``root`` (nested), sorted by relative path; TraceError when unusable."""
    base = Path(root)
    if not base.exists():
        raise TraceError(
            f"trace dataset {base} does not exist; pass the directory holding the *.jsonl shards"
        )
    if not base.is_dir():
        raise TraceError(
            f"trace dataset {base} is not a directory; pass the directory holding the *.jsonl shards"
        )
    shards: list[Path] = []
    try:
        # os.walk without followlinks: a symlinked directory cannot pull in shards from outside.
        for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
            dirnames.sort()
            shards.extend(Path(dirpath, f) for f in filenames if f.endswith(SHARD_SUFFIXES))
    except OSError as exc:
        raise TraceError(f"trace dataset {base} cannot be listed: {exc}") from exc
    if not shards:
        raise TraceError(f"trace dataset {base} holds no *.jsonl or *.jsonl.gz shard")
    return sorted(shards, key=lambda p: p.relative_to(base).as_posix())


def _raise(exc: OSError) -> None:
    raise exc


class TraceDataset:
    """A trace dataset directory; iterate for valid records, ``.rejects`` for the rest.

    ``images``: ``"none"`` (path checks only), ``"header"`` (exists, PNG/JPEG/WebP header, size
    cap) or ``"decode"`` (full decode). Each iteration (``iter``/``scan``) re-reads the shards
    and resets ``rejects`` and ``counts``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        images: str = "header",
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        keep_rejects: bool = True,
    ):
        if images not in IMAGE_MODES:
            raise ValueError(f"images={images!r} is not one of {IMAGE_MODES}")
        if not isinstance(max_line_bytes, int) or max_line_bytes <= 0:
            raise ValueError(f"max_line_bytes must be a positive int, got {max_line_bytes!r}")
        self.root = Path(root)
        self.images = images
        self.max_line_bytes = max_line_bytes
        self.max_pixels = max_pixels
        self.keep_rejects = keep_rejects  # False: scan() still yields rejects, .rejects stays empty
        self.shards = find_shards(self.root)
        self.rejects: list[Reject] = []
        self.counts = {"lines": 0, "valid": 0, "rejected": 0}

    def __iter__(self) -> Iterator[EditRecord]:
        for item in self.scan():
            if isinstance(item, EditRecord):
                yield item

    def scan(self) -> Iterator[EditRecord | Reject]:
        """Every valid record and every reject, in shard and line order."""
        self.rejects = []
        self.counts = {"lines": 0, "valid": 0, "rejected": 0}
        checker = ImageChecker(self.root, self.images, self.max_pixels)
        seen_ids: set[str] = set()
        for shard in self.shards:
            for item in self._scan_shard(shard, checker, seen_ids):
                if isinstance(item, Reject):
                    if self.keep_rejects:
                        self.rejects.append(item)
                    self.counts["rejected"] += 1
                else:
                    self.counts["valid"] += 1
                yield item

    def _scan_shard(
        self, shard: Path, checker: ImageChecker, seen_ids: set[str]
    ) -> Iterator[EditRecord | Reject]:
        name = shard.relative_to(self.root).as_posix()
        base_dir = shard.parent
        lineno = 0
        if not shard.is_file():  # a FIFO or device named *.jsonl would block or never end
            yield Reject(
                name, 1, None, "corrupt_shard", None, f"shard {name} is not a regular file; remove it"
            )
            return
        try:
            with _open(shard) as f:
                for lineno, raw, complete in _lines(f, self.max_line_bytes):
                    self.counts["lines"] += 1
                    yield self._item(name, lineno, raw, complete, base_dir, checker, seen_ids)
        except EOFError as exc:
            yield Reject(
                name, lineno + 1, None, "truncated_gzip", None,
                f"shard {name} ends before its gzip end-of-stream marker after line {lineno} ({exc}); "
                "the lines before were read, recompress or rewrite the shard",
            )  # fmt: skip
        except (OSError, zlib.error) as exc:
            yield Reject(
                name, lineno + 1, None, "corrupt_shard", None,
                f"shard {name} cannot be read past line {lineno}: {exc}; rewrite the shard",
            )  # fmt: skip

    def _item(
        self,
        shard: str,
        lineno: int,
        raw: bytes | None,
        complete: bool,
        base_dir: Path,
        checker: ImageChecker,
        seen_ids: set[str],
    ) -> EditRecord | Reject:
        if raw is None:
            return Reject(
                shard, lineno, None, "line_too_long", None,
                f"line {lineno} of {shard} is longer than {self.max_line_bytes} bytes; split the record "
                "or raise max_line_bytes",
            )  # fmt: skip
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not complete:  # a writer killed mid-record may cut a multi-byte character
                return self._truncated(shard, lineno)
            return Reject(
                shard, lineno, None, "invalid_utf8", None, f"line {lineno} of {shard} is not UTF-8: {exc}"
            )
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]  # a UTF-8 byte-order mark some editors add
        if not text.strip():
            return Reject(
                shard, lineno, None, "empty_line", None,
                f"line {lineno} of {shard} is blank; blank lines are not records, remove them",
            )  # fmt: skip
        try:
            obj = _DECODER.decode(text)
        except _DuplicateKey as exc:
            return Reject(
                shard, lineno, None, "duplicate_key", exc.key,
                f"line {lineno} of {shard} names the key {exc.key!r} twice in one object; keep one",
            )  # fmt: skip
        except (ValueError, RecursionError) as exc:
            if not complete:
                return self._truncated(shard, lineno)
            return Reject(
                shard, lineno, None, "invalid_json", None, f"line {lineno} of {shard} is not JSON: {exc}"
            )
        result = parse_record(obj, root=base_dir, checker=checker, seen_ids=seen_ids)
        if isinstance(result, EditRecord):
            return result
        p = summarize(result)
        return Reject(
            shard, lineno, record_id(obj), p.reason, p.field, f"line {lineno} of {shard}: {p.message}"
        )

    @staticmethod
    def _truncated(shard: str, lineno: int) -> Reject:
        return Reject(
            shard, lineno, None, "truncated_line", None,
            f"the last line ({lineno}) of {shard} has no newline and does not parse: the writer "
            "stopped mid-record; drop that line",
        )  # fmt: skip


def _open(shard: Path) -> BinaryIO:
    if shard.name.endswith(".gz"):
        return gzip.open(shard, "rb")  # type: ignore[return-value]
    return open(shard, "rb")


def _lines(f: BinaryIO, cap: int) -> Iterator[tuple[int, bytes | None, bool]]:
    """(line number, bytes without newline or None when over ``cap``, ended by a newline)."""
    lineno = 0
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        lineno += 1
        if line.endswith(b"\n"):
            yield lineno, line[:-1], True
        elif len(line) <= cap:
            yield lineno, line, False  # the last line of the shard, without newline
        else:
            while True:  # drain the rest of the over-long line without keeping it
                chunk = f.readline(_DRAIN)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield lineno, None, True


def load_records(
    root: str | os.PathLike, images: str = "header", **kwargs: Any
) -> tuple[list[EditRecord], list[Reject]]:
    """All valid records and all rejects of a dataset, as lists."""
    ds = TraceDataset(root, images, **kwargs)
    records = list(ds)
    return records, ds.rejects


def read_traces(
    root: str | os.PathLike,
    images: str = "header",
    *,
    on_reject: Callable[[Reject], None] | None = None,
    **kwargs: Any,
) -> Iterator[EditRecord]:
    """Stream the valid records of a dataset; ``on_reject`` (if given) sees every reject."""
    ds = TraceDataset(root, images, **kwargs)
    for item in ds.scan():
        if isinstance(item, EditRecord):
            yield item
        elif on_reject is not None:
            on_reject(item)
