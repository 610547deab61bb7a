"""The progress journal of a judging run: one JSON line per judged attempt, fsynced per batch.

The journal is what makes a killed run resumable without judging any attempt twice: an attempt
is done once its line is on disk. It lives in the work directory ``OUT.partial/`` and stays in
the finished dataset as its provenance (every label's answer text and cost). It is named
``judge-journal.ndjson`` (JSON Lines) and not ``*.jsonl`` because trace readers take every
``*.jsonl`` under a dataset for a shard.

Line kinds: ``header`` (first line: traces path, judge name), ``result`` (ref, judge label, usage,
raw answer) and ``failure`` (ref, reason, message, usage, raw). A line cut by a kill is dropped
on reopen (its attempt is judged again: its result never reached the disk).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.traces.records import Judge as JudgeLabel

from .base import AttemptRef, CostSummary, JudgeFailure, JudgeResult, Usage

JOURNAL_NAME = "judge-journal.ndjson"
JOURNAL_VERSION = 1


def outcome_to_json(outcome: JudgeResult | JudgeFailure) -> dict[str, Any]:
    out: dict[str, Any] = {"ref": outcome.ref.to_json(), "usage": outcome.usage.to_json(), "raw": outcome.raw}
    if isinstance(outcome, JudgeResult):
        out.update(kind="result", judge=outcome.label.to_json())
    else:
        out.update(kind="failure", reason=outcome.reason, message=outcome.message)
    return out


def outcome_from_json(obj: dict[str, Any]) -> JudgeResult | JudgeFailure:
    ref = AttemptRef.from_json(obj["ref"])
    usage = Usage.from_json(obj.get("usage"))
    if obj["kind"] == "result":
        return JudgeResult(ref, JudgeLabel.from_json(obj["judge"]), usage, obj.get("raw"))
    return JudgeFailure(ref, obj["reason"], obj.get("message", ""), usage, obj.get("raw"))


class Journal:
    """Append-only journal in ``directory``; ``done`` maps each journaled attempt to its outcome."""

    def __init__(self, directory: Path, traces: str, judge: str) -> None:
        self.path = Path(directory) / JOURNAL_NAME
        self.done: dict[AttemptRef, JudgeResult | JudgeFailure] = {}
        self.lines = 0  # outcome lines read or written (a retried failure counts twice)
        self._totals = CostSummary()  # over every line: a retried failure's calls still cost
        header = {"kind": "header", "version": JOURNAL_VERSION, "traces": traces, "judge": judge}
        if self.path.exists():
            self._load(traces, judge)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fd: int | None = fd
        if os.fstat(fd).st_size == 0:
            header["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._append([header])

    def _load(self, traces: str, judge: str) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            # A kill cut the last line: drop it so the next append starts on a fresh line.
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                os.fsync(fh.fileno())
            data = data[:cut]
        for n, line in enumerate(data.splitlines(), start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{self.path}:{n}: unreadable journal line ({exc.msg}); delete {self.path.parent} "
                    "to start over"
                ) from exc
            if obj.get("kind") == "header":
                if obj.get("traces") != traces or obj.get("judge") != judge:
                    raise InputError(
                        f"{self.path.parent} is an unfinished run of judge {obj.get('judge')!r} over "
                        f"{obj.get('traces')!r}, not {judge!r} over {traces!r}; resume it with the same "
                        f"--traces/--judge or pass --restart to discard it"
                    )
                continue
            outcome = outcome_from_json(obj)
            self.done[outcome.ref] = outcome
            self._totals.add(outcome)
            self.lines += 1

    def _append(self, objs: list[dict[str, Any]]) -> None:
        if self._fd is None:
            raise InputError(f"journal {self.path} is closed")
        data = b"".join(
            json.dumps(o, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n" for o in objs
        )
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def record(self, outcomes: list[JudgeResult | JudgeFailure]) -> None:
        """Make a batch of outcomes durable (one write + fsync), then mark them done."""
        if not outcomes:
            return
        self._append([outcome_to_json(o) for o in outcomes])
        for o in outcomes:
            self.done[o.ref] = o
            self._totals.add(o)
        self.lines += len(outcomes)

    def totals(self) -> CostSummary:
        """Cost over every journal line, across all runs that wrote this journal (failures included)."""
        return self._totals

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a journal file (header included), for audits and tests."""
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                out.append(json.loads(line))
    return out
