"""Dataclasses for edit-trace format v1 (``docs/trace-format-v1.md``).

These are plain containers: ``from_json`` trusts its input (the reader validates first,
see ``validate.py``) and ``to_json`` emits exactly the spec's field names. Fields the
spec does not name are kept in ``extra`` so a round trip never loses a writer's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "ade-trace/1"

RECORD_FIELDS = ("format", "id", "instruction", "source_image", "backbone", "category", "meta", "attempts")
ATTEMPT_FIELDS = ("candidate", "round", "reasoning_tokens", "prompt", "image", "cost", "scores", "judge")


@dataclass(frozen=True)
class Flaw:
    """What is wrong and where: ``box`` is (x0, y0, x1, y1) normalised to [0, 1], origin top-left."""

    kind: str
    box: tuple[float, float, float, float]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({"kind": self.kind, "box": [float(v) for v in self.box]})
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Flaw:
        extra = {k: v for k, v in obj.items() if k not in ("kind", "box")}
        return cls(kind=obj["kind"], box=tuple(float(v) for v in obj["box"]), extra=extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Judge:
    """Offline label of one attempt. ``passed`` is the spec's ``pass`` (a Python keyword)."""

    score: float
    passed: bool
    flaws: tuple[Flaw, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            {
                "score": float(self.score),
                "pass": bool(self.passed),
                "flaws": [f.to_json() for f in self.flaws],
            }
        )
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Judge:
        extra = {k: v for k, v in obj.items() if k not in ("score", "pass", "flaws")}
        flaws = tuple(Flaw.from_json(f) for f in obj.get("flaws", []))
        return cls(score=float(obj["score"]), passed=bool(obj["pass"]), flaws=flaws, extra=extra)


@dataclass(frozen=True)
class Cost:
    """What one attempt cost: backbone function evaluations and, optionally, seconds."""

    nfe: int
    latency_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out["nfe"] = int(self.nfe)
        if self.latency_s is not None:
            out["latency_s"] = float(self.latency_s)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Cost:
        extra = {k: v for k, v in obj.items() if k not in ("nfe", "latency_s")}
        lat = obj.get("latency_s")
        return cls(nfe=int(obj["nfe"]), latency_s=None if lat is None else float(lat), extra=extra)


@dataclass
class Attempt:
    """One backbone call: candidate (Best-of-N axis), round (refinement depth), reasoning budget."""

    candidate: int
    round: int
    reasoning_tokens: int
    prompt: str
    cost: Cost
    image: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    judge: Judge | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, int]:
        """The (candidate, round, reasoning_tokens) triple, unique within a record."""
        return (self.candidate, self.round, self.reasoning_tokens)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            {
                "candidate": int(self.candidate),
                "round": int(self.round),
                "reasoning_tokens": int(self.reasoning_tokens),
                "prompt": self.prompt,
                "image": self.image,
                "cost": self.cost.to_json(),
                "scores": {k: float(v) for k, v in self.scores.items()},
                "judge": None if self.judge is None else self.judge.to_json(),
            }
        )
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Attempt:
        judge = obj.get("judge")
        return cls(
            candidate=int(obj["candidate"]),
            round=int(obj["round"]),
            reasoning_tokens=int(obj["reasoning_tokens"]),
            prompt=obj["prompt"],
            cost=Cost.from_json(obj["cost"]),
            image=obj.get("image"),
            scores={k: float(v) for k, v in obj.get("scores", {}).items()},
            judge=None if judge is None else Judge.from_json(judge),
            extra={k: v for k, v in obj.items() if k not in ATTEMPT_FIELDS},
        )


@dataclass
class EditRecord:
    """One edit request and every attempt made for it.

    ``root`` is the directory of the shard that held the record (image paths are
    relative to it); it is set by the reader and never serialised.
    """

    id: str
    instruction: str
    source_image: str
    backbone: str
    attempts: list[Attempt]
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            {
                "format": FORMAT,
                "id": self.id,
                "instruction": self.instruction,
                "source_image": self.source_image,
                "backbone": self.backbone,
                "category": self.category,
                "meta": dict(self.meta),
                "attempts": [a.to_json() for a in self.attempts],
            }
        )
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], root: Path | None = None) -> EditRecord:
        return cls(
            id=obj["id"],
            instruction=obj["instruction"],
            source_image=obj["source_image"],
            backbone=obj["backbone"],
            attempts=[Attempt.from_json(a) for a in obj["attempts"]],
            category=obj.get("category"),
            meta=dict(obj.get("meta") or {}),
            extra={k: v for k, v in obj.items() if k not in RECORD_FIELDS},
            root=root,
        )

    def resolve(self, rel: str) -> Path:
        """Absolute path of an image named by this record (relative to its shard's directory)."""
        if self.root is None:
            raise ValueError(f"record {self.id!r} has no root directory; it was not read from a dataset")
        return self.root / rel

    def attempt_grid(self) -> dict[tuple[int, int, int], Attempt]:
        """Attempts keyed by (candidate, round, reasoning_tokens)."""
        return {a.key: a for a in self.attempts}
