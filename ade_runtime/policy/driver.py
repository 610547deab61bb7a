"""The one attempt procedure: a session decides, an attempt source does the work.

Every place that runs a request's attempts is this driver with a different source:

- the live loop (``ade_runtime.loop``): a backbone, the online scorers, the critique and the verifier
  cascade (``LiveSource``);
- replay and calibration's search (``ade_runtime.offline.replay``): a logged trace record and the
  signals of its attempts (``LoggedSource``);
- ``ade-collect`` and the testbed's generator: every attempt of the grid, visited by a
  ``GridSession`` instead of the adaptive ``PolicySession``.

The driver owns the order of actions and asks the session for every decision: which attempt runs
next, whether a candidate's one-step preview prunes it, whether the expensive verifier is called,
and what comes after an attempt (accept, refine, a fresh candidate, stop). A source only carries an
attempt out and says what it cost, so live and replay agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ade_runtime.policy.session import Key, Step

Keep = Callable[[float | None], bool]  # the preview's confidence -> keep the candidate?


@dataclass(frozen=True)
class Generated:
    """How an attempt's generation ended: ``failed`` (the backbone raised) or ``pruned`` (at its preview)."""

    failed: bool = False
    pruned: bool = False


@dataclass(frozen=True)
class Judged:
    """The first-stage verdict on a finished attempt: the confidence from the cheap signals and the
    critique, and the critique's refine-or-fresh choice (``CritiquePredictor.should_refine``)."""

    confidence: float | None
    refine_ok: bool = True


class Session(Protocol):
    """What the driver asks of a policy: ``PolicySession`` (adaptive) or ``GridSession`` (all attempts);
    ``observe`` takes ``(step, confidence, *, pruned, failed, seconds, refine_ok)``."""

    next_step: Callable[[], Step | None]
    prunes: Callable[[Step], bool]
    should_prune: Callable[[float | None], bool]
    needs_verifier: Callable[[float | None], bool]
    abort: Callable[[str], None]
    observe: Callable[..., None]


class AttemptSource(Protocol):
    """Where attempts come from. ``generate`` returns None when the attempt does not exist (a logged
    source without it); ``verifies`` says whether an expensive verifier is in the stack."""

    verifies: bool

    def generate(self, step: Step, keep: Keep | None) -> Generated | None: ...
    def judge(self, step: Step) -> Judged: ...
    def verify(self, step: Step) -> float | None: ...
    def select_value(self, step: Step, confidence: float | None) -> float | None: ...
    def seconds(self, step: Step) -> float: ...


def drive(session: Session, source: AttemptSource) -> Key | None:
    """Run ``session`` over ``source`` until it stops; returns the key of a missing attempt, if any."""
    while (step := session.next_step()) is not None:
        keep: Keep | None = None
        if session.prunes(step):
            keep = lambda conf: not session.should_prune(conf)  # noqa: E731 (bound to this session)
        gen = source.generate(step, keep)
        if gen is None:
            session.abort("missing_attempt")
            return step.key
        if gen.failed or gen.pruned:
            session.observe(step, None, pruned=gen.pruned, failed=gen.failed, seconds=source.seconds(step))
            continue
        # the cascade: the cheap signals first; the expensive verifier only where the session asks
        judged = source.judge(step)
        confidence = judged.confidence
        if source.verifies and session.needs_verifier(confidence):
            confidence = source.verify(step)
        session.observe(
            step,
            source.select_value(step, confidence),
            seconds=source.seconds(step),
            refine_ok=judged.refine_ok,
        )
    return None


class GridSession:
    """Every attempt of a candidates x rounds x reasoning-levels grid, in trace order (levels, then
    candidates, then rounds); round r > 0 refines round r - 1. A failed or pruned attempt ends its
    candidate's chain (there is nothing to refine). Nothing is pruned and the expensive verifier
    scores every attempt, so that replay can run the cascade at any band and charge each call."""

    def __init__(self, candidates: int, rounds: int, levels: list[int] | tuple[int, ...]) -> None:
        if candidates < 1 or rounds < 1 or not levels:
            raise ValueError(f"an empty grid: {candidates} candidates, {rounds} rounds, levels {levels}")
        self._todo = iter([(c, r, t) for t in levels for c in range(candidates) for r in range(rounds)])
        self._broken: set[tuple[int, int]] = set()  # (candidate, level) chains that ended
        self.stop_reason: str | None = None

    def next_step(self) -> Step | None:
        for c, r, t in self._todo:
            if self.stop_reason is not None:
                break
            if (c, t) not in self._broken:
                return Step(c, r, t, (c, r - 1, t) if r else None)
        return None

    def prunes(self, step: Step) -> bool:
        return False

    def should_prune(self, preview_confidence: float | None) -> bool:
        return False

    def needs_verifier(self, first_stage: float | None) -> bool:
        return True

    def abort(self, reason: str) -> None:
        self.stop_reason = reason

    def observe(self, step: Step, confidence: float | None, *, pruned=False, failed=False, **_) -> None:
        if pruned or failed:
            self._broken.add((step.candidate, step.reasoning_tokens))
