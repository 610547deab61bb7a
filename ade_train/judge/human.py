"""Human labels imported from CSV or JSONL and served through the judge protocol.

One row labels one attempt (request ``id`` + ``candidate``, ``round``, ``reasoning_tokens``) with
``score`` in [0, 1] and/or ``pass``; a row may carry one flaw (``kind`` and the normalised box
columns ``x0, y0, x1, y1``), and several rows of the same attempt add up their flaws (they must
agree on score and pass). JSONL rows may instead give ``flaws: [{"kind", "box"}]``. With a score
only, pass = score >= ``pass_threshold``; with pass only, score = 1.0 or 0.0.

Nothing is dropped silently: invalid rows are reported at load time (file, line, reason), and
rows that match no attempt of the dataset are reported by ``unmatched`` after the run.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.traces.records import Flaw
from ade_runtime.traces.records import Judge as JudgeLabel
from ade_runtime.verifiers.viescore import valid_box

from .base import AttemptRef, JudgeFailure, JudgeItem, JudgeResult, make_label
from .viescore import DEFAULT_PASS_THRESHOLD

KEY_COLUMNS = ("id", "candidate", "round", "reasoning_tokens")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
_TRUE = {"true", "1", "yes", "y", "pass", "passed"}
_FALSE = {"false", "0", "no", "n", "fail", "failed"}


@dataclass(frozen=True)
class LabelProblem:
    """One row that could not be used: where it is and why (``reason`` is a short code)."""

    file: str
    line: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.message}"


class _RowError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _as_int(row: dict[str, Any], name: str) -> int:
    v = row.get(name)
    if _blank(v):
        raise _RowError("missing_field", f"column {name!r} is missing or empty")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _RowError("invalid_value", f"{name}={v!r} is not an integer") from None
    if not f.is_integer() or f < 0:
        raise _RowError("invalid_value", f"{name}={v!r} must be an integer >= 0")
    return int(f)


def _as_pass(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise _RowError("invalid_value", f"pass={v!r} is not a boolean (true/false, 1/0, yes/no, pass/fail)")


def _parse_row(row: dict[str, Any], pass_threshold: float) -> tuple[AttemptRef, float, bool, list[Flaw]]:
    row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    rid = row.get("id")
    if _blank(rid):
        raise _RowError("missing_field", "column 'id' is missing or empty")
    ref = AttemptRef(
        str(rid).strip(), _as_int(row, "candidate"), _as_int(row, "round"), _as_int(row, "reasoning_tokens")
    )
    score: float | None = None
    if not _blank(row.get("score")):
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise _RowError("invalid_value", f"score={row['score']!r} is not a number") from None
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise _RowError("invalid_value", f"score={row['score']!r} must be in [0, 1]")
    passed = None if _blank(row.get("pass")) else _as_pass(row["pass"])
    if score is None and passed is None:
        raise _RowError("missing_field", "the row has neither 'score' nor 'pass'")
    if score is None:
        score = 1.0 if passed else 0.0
    if passed is None:
        passed = score >= pass_threshold
    flaws: list[Flaw] = []
    boxes: list[tuple[Any, Any]] = []
    if any(not _blank(row.get(c)) for c in BOX_COLUMNS):
        boxes.append((row.get("kind"), [row.get(c) for c in BOX_COLUMNS]))
    elif isinstance(row.get("box"), list):
        boxes.append((row.get("kind"), row["box"]))
    for f in row.get("flaws") or []:
        boxes.append(
            (f.get("kind") if isinstance(f, dict) else None, f.get("box") if isinstance(f, dict) else None)
        )
    for kind, raw in boxes:
        if _blank(kind):
            raise _RowError("missing_field", "a flaw box needs a 'kind'")
        box = valid_box(raw)
        if box is None:
            raise _RowError(
                "invalid_box", f"box {raw!r} must be 4 numbers in [0, 1] with x0 < x1 and y0 < y1"
            )
        flaws.append(Flaw(kind=str(kind).strip(), box=box))
    return ref, score, passed, flaws


def _rows(path: Path) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, row or None, error) for every data row of a CSV or JSONL file."""
    out: list[tuple[int, dict[str, Any] | None, str | None]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [
                c for c in KEY_COLUMNS if c not in [f.strip().lower() for f in reader.fieldnames or []]
            ]
            if missing:
                raise InputError(
                    f"{path}: header lacks the columns {missing}; needed: {', '.join(KEY_COLUMNS)}"
                )
            for row in reader:
                out.append((reader.line_num, row, None))
        return out
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise InputError(f"{path}: human labels must be a .csv or .jsonl file")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append((n, None, f"not valid JSON ({exc.msg})"))
                continue
            out.append(
                (n, obj, None) if isinstance(obj, dict) else (n, None, "the line is not a JSON object")
            )
    return out


class HumanJudge:
    """Serves imported labels; attempts without a row get a ``no_label`` failure."""

    needs_images = False

    def __init__(self, path: str | Path, pass_threshold: float = DEFAULT_PASS_THRESHOLD) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"human labels file {self.path} does not exist")
        self.name = f"human:{self.path}"
        self.problems: list[LabelProblem] = []
        self.labels: dict[AttemptRef, JudgeLabel] = {}
        self.lines: dict[AttemptRef, list[int]] = {}
        for line, row, err in _rows(self.path):
            if err is not None:
                self.problems.append(LabelProblem(str(self.path), line, "invalid_json", err))
                continue
            try:
                ref, score, passed, flaws = _parse_row(row, pass_threshold)
                prev = self.labels.get(ref)
                if prev is not None and (abs(prev.score - score) > 1e-9 or prev.passed != passed):
                    raise _RowError(
                        "conflict",
                        f"{ref} is labelled again with a different score/pass (first on "
                        f"line {self.lines[ref][0]})",
                    )
            except _RowError as exc:
                self.problems.append(LabelProblem(str(self.path), line, exc.reason, str(exc)))
                continue
            old_flaws = prev.flaws if prev is not None else ()
            self.labels[ref] = make_label(score, passed, tuple(old_flaws) + tuple(flaws))
            self.lines.setdefault(ref, []).append(line)

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        out: list[JudgeResult | JudgeFailure] = []
        for it in items:
            label = self.labels.get(it.ref)
            if label is None:
                out.append(JudgeFailure(it.ref, "no_label", f"{self.path} has no row for {it.ref}"))
            else:
                out.append(JudgeResult(it.ref, label))
        return out

    def unmatched(self, dataset_refs: set[AttemptRef]) -> list[LabelProblem]:
        """Rows whose attempt is not in the dataset (wrong id or triple), in file order."""
        out = [
            LabelProblem(str(self.path), line, "unmatched", f"no attempt {ref} in the traces")
            for ref, lines in self.lines.items()
            if ref not in dataset_refs
            for line in lines
        ]
        return sorted(out, key=lambda p: p.line)
