"""What a ``TraceWriter`` does to a record before touching the disk: the writer's ``RecordLimits``,
every rule of the format (``validate_record``, with the record's own images counted as present),
where each image goes, the images encoded in memory and hashed into ``meta.ade.image_sha256``, and
the serialised line. Any refusal raises ``RecordRefused`` (docs/trace-format-v1.md; docs/traces.md,
Writing).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .claims import RecordRefused
from .images import ImageChecker, lexical_problem, safe_join
from .reader import DEFAULT_MAX_LINE_BYTES
from .records import EditRecord
from .staging import SUFFIX_FORMATS, encode_image
from .validate import validate_record

# {relative path: (target path, encoded bytes, the first field naming it)}
Staged = dict[str, tuple[Path, bytes, str]]


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


def prepare_record(
    record: EditRecord | dict[str, Any],
    images: dict[str, Any] | None,
    *,
    root: Path,
    checker: ImageChecker,
    limits: RecordLimits,
    encode: bool = True,
) -> tuple[dict, bytes, Staged]:
    """(record object with image hashes, its line, {rel: (target, bytes, field)}) for a writer at
    ``root``; no disk writes. ``encode=False`` checks the images' paths only (a draft: no encoding,
    no hashes)."""
    obj = record.to_json() if isinstance(record, EditRecord) else record
    if not isinstance(obj, dict):
        raise RecordRefused(
            f"a trace record must be a dict or EditRecord, got {type(obj).__name__}",
            "not_an_object",
            None,
        )
    limits.check_fields(obj)
    images = dict(images or {})
    targets = {rel: image_target(root, rel) for rel in images}
    staged_checker = _StagedChecker(checker, set(images))
    problems = validate_record(obj, base_dir=root, checker=staged_checker)  # type: ignore[arg-type]
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise RecordRefused(
            f"refusing to write an invalid trace record: {p.message} [{p.reason}]{more}",
            p.reason,
            p.field,
        )
    fields = _image_fields(obj)
    staged: Staged = {}
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
    if len(line) > limits.max_record_bytes:
        raise RecordRefused(
            f"record {obj['id']!r} is {len(line)} bytes as JSON, over the limit of "
            f"{limits.max_record_bytes}; shorten its strings or log fewer attempts [record_too_large]",
            "record_too_large",
            None,
        )
    return obj, line + b"\n", staged


def image_target(root: Path, rel: object) -> Path:
    """Where an image a writer at ``root`` places goes; the path must be relative, normalised and inside."""
    problem = lexical_problem(rel)
    if problem is not None:
        raise RecordRefused(f"image path {rel!r} {problem[1]} [{problem[0]}]", problem[0], None)
    assert isinstance(rel, str)
    try:
        full = safe_join(root, rel)
    except ValueError as exc:
        raise RecordRefused(f"{exc} [path_escape]", "path_escape", None) from exc
    norm = full.relative_to(os.path.normpath(os.path.abspath(root))).as_posix()
    if norm != rel:
        raise RecordRefused(
            f"image path {rel!r} is not in normal form; write it as {norm!r} [bad_path]", "bad_path", None
        )
    return full


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
