"""The vocabulary of a broken trace record and the typed per-field checks that find it.

``REASONS`` lists every stable reject code with its meaning (the docs table and ``ade-traces
validate`` use it); a ``Problem`` is one broken rule (code, field path, message naming the fix);
``Collector`` gathers them through typed checks (integers >= 0, bounded finite numbers, strings,
valid Unicode, free-form data without NaN/Infinity) and stops at ``MAX_PROBLEMS``. The walk over a
record's fields, in the order the spec gives them, is ``validate.py`` (docs/trace-format-v1.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_PROBLEMS = 20

#: Every reject reason code, with what it means (the docs table and the CLI use this).
REASONS: dict[str, str] = {
    "empty_line": "a blank line (only whitespace); blank lines are not records, remove them",
    "invalid_utf8": "the line is not valid UTF-8",
    "invalid_json": "the line is not one JSON value",
    "truncated_line": "the last line has no newline and does not parse (a writer stopped mid-record)",
    "line_too_long": "the line exceeds the reader's line cap (16 MiB by default)",
    "truncated_gzip": "a .jsonl.gz shard ends before its end-of-stream marker (lines before it are kept)",
    "corrupt_shard": "a shard cannot be read further (bad gzip data, I/O error)",
    "not_an_object": "the line is JSON but not an object",
    "duplicate_key": "an object names the same key twice",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong JSON type (booleans are not numbers)",
    "wrong_format": 'format is not exactly "ade-trace/1"',
    "empty_string": "id/backbone empty, or instruction empty after trimming",
    "invalid_unicode": "a string holds a lone surrogate and cannot be written as UTF-8",
    "nan": "a number is NaN",
    "infinity": "a number is +/-Infinity (or overflows a double)",
    "out_of_range": "a number is outside its range (negative count/cost, score or box outside [0, 1])",
    "bad_box": "a flaw box is not [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
    "empty_attempts": "attempts is an empty array",
    "duplicate_attempt": "two attempts share (candidate, round, reasoning_tokens)",
    "missing_parent_round": "round r > 0 without round r-1 of the same candidate and reasoning budget",
    "duplicate_id": "the id was already used by a valid record earlier in the dataset",
    "bad_path": "an image path is empty or contains NUL",
    "absolute_path": "an image path is absolute",
    "path_escape": "an image path leaves the dataset directory ('..' or a symlink pointing outside)",
    "missing_image": "an image file does not exist",
    "unreadable_image": "an image path is not a regular file",
    "unsupported_image_format": "an image is not PNG, JPEG or WebP",
    "image_too_large": "an image declares more pixels than the cap (decompression-bomb guard)",
    "corrupt_image": "an image cannot be opened or decoded",
    "image_hash_mismatch": (
        "an image's SHA-256 differs from the one its record stores in meta.ade.image_sha256 "
        "(checked when images are decoded)"
    ),
}

HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Problem:
    """One broken rule: stable ``reason`` code, ``field`` path (None for the whole line), human ``message``."""

    reason: str
    field: str | None
    message: str


class TooManyProblems(Exception):
    """Stop collecting once MAX_PROBLEMS are found (a record with 10^5 bad attempts)."""


class Collector:
    """The problems of one record, found by the typed checks below (``add`` stops at MAX_PROBLEMS)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.hashes: dict[str, str] = {}  # meta.ade.image_sha256: relative path -> hex digest

    def add(self, reason: str, field: str | None, message: str) -> None:
        self.problems.append(Problem(reason, field, message))
        if len(self.problems) >= MAX_PROBLEMS:
            raise TooManyProblems

    # -- typed field checks; each returns the value when it is valid, else None --------------------

    def int_ge0(self, obj: dict, key: str, path: str, what: str) -> int | None:
        field = f"{path}.{key}" if path else key
        if key not in obj:
            self.add("missing_field", field, f"{field} is missing; write {what} as an integer >= 0")
            return None
        v = obj[key]
        if type(v) is float and math.isfinite(v) and v.is_integer():
            v = int(v)
        if type(v) is not int:
            self.number_problem(v, field, f"an integer >= 0 ({what})")
            return None
        if v < 0:
            self.add("out_of_range", field, f"{field} must be >= 0 ({what}), got {v}")
            return None
        return v

    def number(self, v: Any, field: str, lo: float | None, hi: float | None, what: str) -> float | None:
        if type(v) not in (int, float):
            self.number_problem(v, field, f"a finite number ({what})")
            return None
        if type(v) is float and not math.isfinite(v):
            self.number_problem(v, field, f"a finite number ({what})")
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            self.add("out_of_range", field, f"{field} must be {rng} ({what}), got {v!r}")
            return None
        return float(v)

    def number_problem(self, v: Any, field: str, expected: str) -> None:
        if type(v) is float and math.isnan(v):
            self.add("nan", field, f"{field} is NaN; write {expected} (NaN is not allowed in traces)")
        elif type(v) is float and math.isinf(v):
            self.add("infinity", field, f"{field} is {v}; write {expected} (Infinity is not allowed)")
        else:
            self.add("wrong_type", field, f"{field} must be {expected}, got {show(v)}")

    def string(
        self, obj: dict, key: str, path: str, *, required: bool, non_empty: bool, strip: bool = False
    ) -> Any:
        field = f"{path}.{key}" if path else key
        if key not in obj:
            if required:
                self.add("missing_field", field, f"{field} is missing; it is a required string")
            return None
        v = obj[key]
        if not isinstance(v, str):
            self.add("wrong_type", field, f"{field} must be a string, got {show(v)}")
            return None
        if non_empty and not (v.strip() if strip else v):
            self.add("empty_string", field, f"{field} must be non-empty{' after trimming' if strip else ''}")
            return None
        self.unicode(v, field)
        return v

    def unicode(self, v: str, field: str) -> None:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            self.add("invalid_unicode", field, f"{field} holds a lone surrogate; write valid Unicode text")

    def free_form(self, value: Any, field: str) -> None:
        """Non-finite numbers and lone surrogates anywhere inside free-form data (meta, extra fields)."""
        stack = [(value, field)]  # iterative: data nested near the parser's limit must not overflow
        while stack:
            v, f = stack.pop()
            t = type(v)
            if t is float and not math.isfinite(v):
                self.number_problem(v, f, "a finite number")
            elif t is str:
                self.unicode(v, f)
            elif t is dict:
                for k, x in v.items():
                    stack.append((x, f"{f}.{k}" if f else str(k)))
            elif t is list:
                stack.extend((x, f"{f}[{i}]") for i, x in enumerate(v))


def show(v: Any) -> str:
    """A value as a message names it: its JSON type and a short repr."""
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if v is None:
        return "null"
    text = (
        repr(v[:61] if isinstance(v, str) else v) if not isinstance(v, (list, dict)) else f"of {len(v)} items"
    )
    return f"{type(v).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
