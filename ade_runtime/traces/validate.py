"""Validation of one parsed trace record against edit-trace format v1 (``docs/trace-format-v1.md``).

``validate_record(obj)`` returns the list of problems of a parsed JSON object (empty when
valid); ``parse_record(obj)`` returns an ``EditRecord`` or that list. Every problem carries
a short stable ``reason`` code (counted by ``ade-traces validate``), the ``field`` path
(``"attempts[3].cost.nfe"``) and a ``message`` naming the field and the fix.

The rules are exactly the spec's; unknown extra fields are accepted (and kept) but must
not hold NaN/Infinity either, so every valid record can be written back with
``allow_nan=False``. Integers written as integral floats (``28.0``) are accepted as JSON
Schema's ``integer`` does; booleans are never numbers. The reason codes, ``Problem`` and the typed
per-field checks are in ``field_checks.py``; this module walks a record through them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .field_checks import HEX, Collector, Problem, TooManyProblems, show
from .images import ImageChecker, lexical_problem
from .records import ATTEMPT_FIELDS, FORMAT, RECORD_FIELDS, EditRecord


def _image(
    c: Collector, v: Any, field: str, base_dir: str | os.PathLike | None, checker: ImageChecker | None
) -> None:
    problem = (
        checker.check(base_dir, v) if (checker is not None and base_dir is not None) else lexical_problem(v)
    )
    if problem is not None:
        c.add(problem[0], field, f"{field} {problem[1]}")
        return
    expected = c.hashes.get(v) if isinstance(v, str) else None
    if expected is None or checker is None or base_dir is None or checker.mode != "decode":
        return
    actual = checker.digest(base_dir, v)
    if actual is not None and actual != expected:
        c.add(
            "image_hash_mismatch",
            field,
            f"{field} ({v!r}) has SHA-256 {actual[:16]}... but meta.ade.image_sha256 records "
            f"{expected[:16]}...: the file was replaced or altered after the record was written; "
            "restore the original image or drop the record",
        )


def _image_hashes(obj: dict) -> dict[str, str]:
    """The well-formed entries of ``meta.ade.image_sha256`` (optional; anything else is ignored)."""
    meta = obj.get("meta")
    ade = meta.get("ade") if isinstance(meta, dict) else None
    table = ade.get("image_sha256") if isinstance(ade, dict) else None
    if not isinstance(table, dict):
        return {}
    return {
        k: v
        for k, v in table.items()
        if isinstance(k, str) and isinstance(v, str) and len(v) == 64 and HEX.issuperset(v)
    }


def _judge(c: Collector, j: Any, p: str) -> None:
    if not isinstance(j, dict):
        c.add("wrong_type", p, f"{p} must be null or an object with score, pass, flaws; got {show(j)}")
        return
    if "score" not in j:
        c.add("missing_field", f"{p}.score", f"{p}.score is missing; write the judge score in [0, 1]")
    else:
        c.number(j["score"], f"{p}.score", 0.0, 1.0, "judge score")
    if "pass" not in j:
        c.add("missing_field", f"{p}.pass", f"{p}.pass is missing; write true or false")
    elif type(j["pass"]) is not bool:
        c.add("wrong_type", f"{p}.pass", f"{p}.pass must be true or false, got {show(j['pass'])}")
    if "flaws" not in j:
        c.add("missing_field", f"{p}.flaws", f"{p}.flaws is missing; write [] when there are none")
    elif not isinstance(j["flaws"], list):
        c.add("wrong_type", f"{p}.flaws", f"{p}.flaws must be an array, got {show(j['flaws'])}")
    else:
        for k, flaw in enumerate(j["flaws"]):
            _flaw(c, flaw, f"{p}.flaws[{k}]")
    c.free_form({k: v for k, v in j.items() if k not in ("score", "pass", "flaws")}, p)


def _flaw(c: Collector, flaw: Any, p: str) -> None:
    if not isinstance(flaw, dict):
        c.add("wrong_type", p, f"{p} must be an object {{kind, box}}, got {show(flaw)}")
        return
    c.string(flaw, "kind", p, required=True, non_empty=False)
    if "box" not in flaw:
        c.add("missing_field", f"{p}.box", f"{p}.box is missing; write [x0, y0, x1, y1] normalised to [0, 1]")
        return
    box = flaw["box"]
    if not isinstance(box, list) or len(box) != 4:
        c.add(
            "bad_box", f"{p}.box", f"{p}.box must be an array [x0, y0, x1, y1] of 4 numbers, got {show(box)}"
        )
        return
    vals = [c.number(v, f"{p}.box[{i}]", 0.0, 1.0, "normalised coordinate") for i, v in enumerate(box)]
    if None in vals:
        return
    x0, y0, x1, y1 = vals
    if not (x0 < x1 and y0 < y1):  # type: ignore[operator]
        c.add("bad_box", f"{p}.box", f"{p}.box must have x0 < x1 and y0 < y1 (origin top-left), got {box}")
    c.free_form({k: v for k, v in flaw.items() if k not in ("kind", "box")}, p)


def _attempt(
    c: Collector, a: Any, p: str, base_dir: Any, checker: ImageChecker | None
) -> tuple[int, int, int] | None:
    if not isinstance(a, dict):
        c.add("wrong_type", p, f"{p} must be an object, got {show(a)}")
        return None
    cand = c.int_ge0(a, "candidate", p, "independent sample index")
    rnd = c.int_ge0(a, "round", p, "refinement depth")
    tok = c.int_ge0(a, "reasoning_tokens", p, "thinking budget, 0 = none")
    c.string(a, "prompt", p, required=True, non_empty=False)
    if "image" not in a:
        c.add("missing_field", f"{p}.image", f"{p}.image is missing; write the output path or null")
    elif a["image"] is not None:
        _image(c, a["image"], f"{p}.image", base_dir, checker)
    cost = a.get("cost")
    if "cost" not in a:
        c.add("missing_field", f"{p}.cost", f'{p}.cost is missing; write {{"nfe": <int>}}')
    elif not isinstance(cost, dict):
        c.add(
            "wrong_type",
            f"{p}.cost",
            f"{p}.cost must be an object with nfe (and latency_s), got {show(cost)}",
        )
    else:
        c.int_ge0(cost, "nfe", f"{p}.cost", "backbone function evaluations")
        if cost.get("latency_s") is not None:
            c.number(cost["latency_s"], f"{p}.cost.latency_s", 0.0, None, "seconds")
        c.free_form({k: v for k, v in cost.items() if k not in ("nfe", "latency_s")}, f"{p}.cost")
    if "scores" not in a:
        c.add("missing_field", f"{p}.scores", f"{p}.scores is missing; write {{}} when there are none")
    elif not isinstance(a["scores"], dict):
        c.add(
            "wrong_type",
            f"{p}.scores",
            f"{p}.scores must be an object name -> number, got {show(a['scores'])}",
        )
    else:
        for name, v in a["scores"].items():
            c.number(v, f"{p}.scores.{name}", None, None, "score")
    if "judge" not in a:
        c.add("missing_field", f"{p}.judge", f"{p}.judge is missing; write null when not judged")
    elif a["judge"] is not None:
        _judge(c, a["judge"], f"{p}.judge")
    c.free_form({k: v for k, v in a.items() if k not in ATTEMPT_FIELDS}, p)
    if cand is None or rnd is None or tok is None:
        return None
    return cand, rnd, tok


def _record(c: Collector, obj: Any, base_dir: Any, checker: ImageChecker | None) -> None:
    if not isinstance(obj, dict):
        c.add("not_an_object", None, f"the line must be a JSON object (one edit request), got {show(obj)}")
        return
    if "format" not in obj:
        c.add("missing_field", "format", f'format is missing; write "format": "{FORMAT}"')
    elif obj["format"] != FORMAT:
        c.add("wrong_format", "format", f"format must be exactly {FORMAT!r}, got {show(obj['format'])}")
    c.hashes = _image_hashes(obj)
    c.string(obj, "id", "", required=True, non_empty=True)
    c.string(obj, "instruction", "", required=True, non_empty=True, strip=True)
    if "source_image" not in obj:
        c.add(
            "missing_field", "source_image", "source_image is missing; write the source image's relative path"
        )
    else:
        _image(c, obj["source_image"], "source_image", base_dir, checker)
    c.string(obj, "backbone", "", required=True, non_empty=True)
    if obj.get("category") is not None:
        c.string(obj, "category", "", required=False, non_empty=False)
    if "meta" in obj:
        if not isinstance(obj["meta"], dict):
            c.add(
                "wrong_type",
                "meta",
                f"meta must be an object (omit it or write {{}}), got {show(obj['meta'])}",
            )
        else:
            c.free_form(obj["meta"], "meta")
    c.free_form({k: v for k, v in obj.items() if k not in RECORD_FIELDS}, "")
    if "attempts" not in obj:
        c.add("missing_field", "attempts", "attempts is missing; write at least one attempt")
        return
    attempts = obj["attempts"]
    if not isinstance(attempts, list):
        c.add("wrong_type", "attempts", f"attempts must be an array, got {show(attempts)}")
        return
    if not attempts:
        c.add("empty_attempts", "attempts", "attempts is empty; a record needs at least one attempt")
        return
    keys: dict[tuple[int, int, int], int] = {}
    for i, a in enumerate(attempts):
        key = _attempt(c, a, f"attempts[{i}]", base_dir, checker)
        if key is None:
            continue
        if key in keys:
            c.add(
                "duplicate_attempt",
                f"attempts[{i}]",
                f"attempts[{i}] repeats (candidate, round, reasoning_tokens) = {key} of attempts[{keys[key]}]; "
                "each triple must be unique",
            )
        else:
            keys[key] = i
    for (cand, rnd, tok), i in keys.items():
        if rnd > 0 and (cand, rnd - 1, tok) not in keys:
            c.add(
                "missing_parent_round",
                f"attempts[{i}].round",
                f"attempts[{i}] is round {rnd} of candidate {cand} (reasoning_tokens {tok}) but round {rnd - 1} "
                "of that candidate and budget is absent; log every round of a refinement chain",
            )


def validate_record(
    obj: Any,
    *,
    base_dir: str | os.PathLike | None = None,
    checker: ImageChecker | None = None,
    seen_ids: set[str] | None = None,
) -> list[Problem]:
    """Problems of one parsed record (empty list when valid).

    ``base_dir`` is the directory of the record's shard; with a ``checker`` the image paths
    are checked there (existence, format, safety), otherwise only lexically. ``seen_ids``
    holds the ids of earlier valid records: a repeat is a ``duplicate_id``, and the id of a
    valid record is added to it.
    """
    c = Collector()
    try:
        _record(c, obj, base_dir, checker)
    except TooManyProblems:
        pass
    if seen_ids is not None and not c.problems:
        rid = obj["id"]
        if rid in seen_ids:
            c.add(
                "duplicate_id",
                "id",
                f"id {rid!r} is used by an earlier record of the dataset; ids must be unique",
            )
        else:
            seen_ids.add(rid)
    return c.problems


def parse_record(
    obj: Any,
    *,
    root: str | os.PathLike | None = None,
    checker: ImageChecker | None = None,
    seen_ids: set[str] | None = None,
) -> EditRecord | list[Problem]:
    """An ``EditRecord`` (with ``root`` set) when ``obj`` is valid, else its list of problems."""
    problems = validate_record(obj, base_dir=root, checker=checker, seen_ids=seen_ids)
    if problems:
        return problems
    return EditRecord.from_json(obj, root=None if root is None else Path(root))


def record_id(obj: Any) -> str | None:
    """The id of a parsed line when it is readable (for reject reports), else None."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and rid:
            return rid
    return None


def summarize(problems: list[Problem]) -> Problem:
    """One problem standing for a rejected record: the first, its message noting how many more."""
    first = problems[0]
    if len(problems) == 1:
        return first
    more = ", ".join(f"{p.reason}@{p.field}" for p in problems[1:4])
    extra = f" (and {len(problems) - 1} more: {more}{', ...' if len(problems) > 4 else ''})"
    return Problem(first.reason, first.field, first.message + extra)
