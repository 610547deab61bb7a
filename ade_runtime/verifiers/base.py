"""The verifier protocol: what scores an attempt online, and what each call costs.

Every decision of the loop (stop, prune, select, refine) reads a calibrated confidence, and that
confidence reads verifiers. A verifier scores ``(source, attempt, instruction)`` and says what the
call cost, so the loop, replay and every budget or speed-up figure can charge it (Flash-BoN's point:
an uncounted verifier hides where the compute went; ADE-CoT counts none of its MLLM calls).

Two tiers:

- **cheap** verifiers (CLIP-T / CLIP-I, the critique head) run on every finished attempt; their
  scores give the first-stage confidence (the calibrator's fallback map);
- one **expensive** verifier (a VLM reward model: VIEScore prompts to Qwen2-VL / Qwen2.5-VL,
  EditScore, an OpenAI-compatible endpoint, or the testbed's emulated reward model) runs only when
  that first-stage confidence falls in the policy's uncertain band
  (``PolicyConfig.verify_low <= p <= PolicyConfig.verify_high``); its score is one more feature of
  the calibrator's primary map.

A ``Verdict``'s scores are merged into the attempt's ``scores`` in the trace (names are the
verifier's ``feature``), and each call is recorded with its cost under ``meta.ade.verifier_calls``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ade_runtime.errors import InputError


@dataclass(frozen=True)
class VerifierCost:
    """Cost of one call. ``seconds`` are GPU-seconds on the reference GPU (measured or documented;
    a live call also reports its own wall time); ``flops`` the forward FLOPs when known."""

    seconds: float = 0.0
    flops: float | None = None
    source: str = ""  # where the figure comes from (a measurement, a paper, a model card)

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise InputError(f"VerifierCost.seconds must be a finite number >= 0, got {self.seconds!r}")
        if self.flops is not None and not (math.isfinite(self.flops) and self.flops >= 0):
            raise InputError(f"VerifierCost.flops must be a finite number >= 0 or None, got {self.flops!r}")


@dataclass
class Verdict:
    """What one verifier call said about one attempt, and what the call cost."""

    scores: dict[str, float]  # feature name -> finite value (merged into the attempt's scores)
    seconds: float  # charged GPU-seconds of this call (modelled cost, or measured wall time)
    flops: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. the raw answer, sub-scores, reasoning

    def call_record(self, verifier: str, key: Any) -> dict[str, Any]:
        """One entry of ``meta.ade.verifier_calls``."""
        rec: dict[str, Any] = {
            "verifier": verifier,
            "key": list(key),
            "seconds": round(float(self.seconds), 6),
        }
        if self.flops is not None:
            rec["flops"] = float(self.flops)
        return rec


@runtime_checkable
class Verifier(Protocol):
    """Anything that scores an attempt. ``name`` identifies it in traces; ``cost`` is per call."""

    name: str
    cost: VerifierCost

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict: ...


def finite_scores(scores: Mapping[str, Any], where: str) -> dict[str, float]:
    """Scores as finite floats; a verifier that returns NaN/inf or a non-number is a bug, said here."""
    out: dict[str, float] = {}
    for k, v in scores.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: score {k!r} is not a number ({v!r})") from None
        if not math.isfinite(f):
            raise ValueError(f"{where}: score {k!r} is not finite ({v!r})")
        out[str(k)] = f
    return out


class ScorerVerifier:
    """A cheap verifier from a scorer function ``(source, attempt, instruction) -> {name: value}``
    (the CLIP scorer of ``ade_runtime.scoring``, the testbed's online scores)."""

    def __init__(
        self,
        scorer: Callable[[Image.Image, Image.Image, str], Mapping[str, float]],
        name: str = "cheap",
        cost: VerifierCost | None = None,
    ) -> None:
        self.scorer = scorer
        self.name = name
        self.cost = cost or VerifierCost()

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict:
        scores = finite_scores(self.scorer(source, attempt, instruction), f"verifier {self.name!r}")
        return Verdict(scores=scores, seconds=self.cost.seconds, flops=self.cost.flops)
