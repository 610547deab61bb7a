"""The judge protocol: what every labeller (VLM, API model, people, the testbed) implements.

A judge turns a batch of ``JudgeItem`` (instruction, source image, output image, the attempt's
identity) into one ``JudgeResult`` or ``JudgeFailure`` per item, in order. Failures are values,
never exceptions: a malformed answer from a model is recorded and counted, and the run goes on.
The run driver (``run.py``) owns batching across records, the journal and the output dataset.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ade_runtime.traces.records import Flaw
from ade_runtime.traces.records import Judge as JudgeLabel


@dataclass(frozen=True, order=True)
class AttemptRef:
    """Identity of one attempt in a dataset: request id + (candidate, round, reasoning_tokens)."""

    record_id: str
    candidate: int
    round: int
    reasoning_tokens: int

    @property
    def triple(self) -> tuple[int, int, int]:
        return (self.candidate, self.round, self.reasoning_tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.record_id,
            "candidate": self.candidate,
            "round": self.round,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AttemptRef:
        return cls(str(obj["id"]), int(obj["candidate"]), int(obj["round"]), int(obj["reasoning_tokens"]))

    def __str__(self) -> str:
        return f"{self.record_id}[c{self.candidate} r{self.round} t{self.reasoning_tokens}]"


@dataclass
class JudgeItem:
    """One attempt to label. Images are None for judges that do not look at pixels (human labels)."""

    ref: AttemptRef
    instruction: str
    source: Image.Image | None
    output: Image.Image | None
    category: str | None = None


@dataclass
class Usage:
    """What producing one label cost: model calls, wall seconds, tokens where the judge knows them."""

    calls: int = 0
    seconds: float = 0.0
    tokens_in: int | None = None
    tokens_out: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 6),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> Usage:
        obj = obj or {}
        return cls(
            calls=int(obj.get("calls", 0)),
            seconds=float(obj.get("seconds", 0.0)),
            tokens_in=obj.get("tokens_in"),
            tokens_out=obj.get("tokens_out"),
        )


@dataclass
class JudgeResult:
    """A label for one attempt; ``raw`` keeps the model's answer text for auditing (journal only)."""

    ref: AttemptRef
    label: JudgeLabel
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None


@dataclass
class JudgeFailure:
    """No label for one attempt. ``reason`` is a short stable code used for counting.

    Codes: ``malformed`` (unparsable answer), ``http_error``, ``timeout``, ``no_label`` (human file
    has no row), ``judge_error`` (the judge raised), ``no_image`` (an image judge got no pixels).
    """

    ref: AttemptRef
    reason: str
    message: str
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None


@runtime_checkable
class Judge(Protocol):
    """Anything that labels attempts. ``needs_images`` False lets attempts without images be labelled.

    Optional attribute ``thread_safe`` (default True): False makes the run driver use one worker.
    """

    name: str
    needs_images: bool

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        """One result per item, in order; never raises for a bad answer (returns a JudgeFailure)."""
        ...


def make_label(
    score: float, passed: bool, flaws: list[Flaw] | tuple[Flaw, ...] = (), **extra: Any
) -> JudgeLabel:
    """A checked ``Judge`` label: score finite in [0, 1] (clipped within 1e-9), boxes valid."""
    if not math.isfinite(score) or score < -1e-9 or score > 1 + 1e-9:
        raise ValueError(f"judge score {score!r} is outside [0, 1]")
    return JudgeLabel(
        score=min(1.0, max(0.0, float(score))), passed=bool(passed), flaws=tuple(flaws), extra=extra
    )


@dataclass
class CostSummary:
    """Running totals over a judging run (and across resumed runs, rebuilt from the journal)."""

    judged: int = 0
    failed: int = 0
    calls: int = 0
    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_known: bool = False
    failures: Counter = field(default_factory=Counter)

    def add(self, outcome: JudgeResult | JudgeFailure) -> None:
        u = outcome.usage
        self.calls += u.calls
        self.seconds += u.seconds
        if u.tokens_in is not None or u.tokens_out is not None:
            self.tokens_known = True
            self.tokens_in += int(u.tokens_in or 0)
            self.tokens_out += int(u.tokens_out or 0)
        if isinstance(outcome, JudgeResult):
            self.judged += 1
        else:
            self.failed += 1
            self.failures[outcome.reason] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "judged": self.judged,
            "failed": self.failed,
            "malformed": self.failures.get("malformed", 0),
            "failures": dict(sorted(self.failures.items())),
            "judge_calls": self.calls,
            "judge_seconds": round(self.seconds, 3),
            "tokens_in": self.tokens_in if self.tokens_known else None,
            "tokens_out": self.tokens_out if self.tokens_known else None,
        }
