"""The adaptive policy as a small state machine, shared by the live loop and by replay.

One ``PolicySession`` per request: ``next_step()`` says which attempt to run (candidate,
round, reasoning budget, and whether it refines the previous round), ``observe()`` takes
the calibrated confidence of what was run (or that it was pruned at its preview), and
``best()`` names the answer. Every decision is kept with its reason, so a request's trace
explains what was spent and why (ADE-CoT's adaptive stopping; PhysEdit's CARD budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ade_runtime.policy.config import PolicyConfig

Key = tuple[int, int, int]  # (candidate, round, reasoning_tokens), as in the trace format


@dataclass(frozen=True)
class Step:
    """The next attempt to run. ``refines`` is the key of the attempt a refinement round starts from."""

    candidate: int
    round: int
    reasoning_tokens: int
    refines: Key | None = None

    @property
    def key(self) -> Key:
        return (self.candidate, self.round, self.reasoning_tokens)


@dataclass(frozen=True)
class Decision:
    """One decision of the policy, in the order taken; written to the trace's ``meta.ade``."""

    action: str  # "run", "prune", "accept", "refine", "new_candidate", "stop"
    key: Key | None
    reason: str
    confidence: float | None = None

    def to_json(self) -> dict:
        out = {"action": self.action, "reason": self.reason}
        if self.key is not None:
            out["key"] = list(self.key)
        if self.confidence is not None and math.isfinite(self.confidence):
            out["confidence"] = round(float(self.confidence), 6)
        return out


def usable(confidence: float | None) -> bool:
    """NaN, infinite or missing confidences never select or stop anything."""
    return confidence is not None and math.isfinite(confidence)


@dataclass
class PolicySession:
    """Decisions for one request under ``config`` with an attempt ``budget`` and reasoning budget."""

    config: PolicyConfig
    budget: int
    reasoning_tokens: int = 0
    max_seconds: float | None = None  # per-request compute cap (None: no deadline)
    decisions: list[Decision] = field(default_factory=list)
    confidences: dict[Key, float | None] = field(default_factory=dict)
    pruned: list[Key] = field(default_factory=list)
    stop_reason: str | None = None
    _candidate: int = 0
    _round: int = 0
    _used: int = 0
    _pending: Step | None = None
    _spent_s: float = 0.0
    _charged: int = 0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"attempt budget must be >= 1, got {self.budget}")
        if self.max_seconds is not None and not (
            isinstance(self.max_seconds, (int, float))
            and math.isfinite(self.max_seconds)
            and self.max_seconds > 0
        ):
            raise ValueError(f"max_seconds must be a positive number or None, got {self.max_seconds!r}")

    @property
    def seconds_spent(self) -> float:
        return self._spent_s

    def deadline_reached(self) -> bool:
        """The deadline rule, shared by the live loop and replay: the next attempt is not run when the
        seconds spent plus the mean cost of the attempts run so far would exceed ``max_seconds``.
        The first attempt always runs, so a request always has an answer."""
        if self.max_seconds is None or self._charged == 0:
            return False
        return self._spent_s + self._spent_s / self._charged > self.max_seconds

    @property
    def attempts_used(self) -> int:
        return self._used

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.decisions.append(Decision("stop", None, reason))

    def abort(self, reason: str) -> None:
        """Stop with the pending step unrun (the backbone or the dataset could not provide it)."""
        self._pending = None
        self.stop(reason)

    def next_step(self) -> Step | None:
        """The attempt to run next, or None when the request is finished."""
        if self._pending is not None:
            return self._pending
        if self.done:
            return None
        if self._used >= self.budget:
            self.stop("budget")
            return None
        if self._candidate >= self.config.max_candidates:
            self.stop("max_candidates")
            return None
        if self.deadline_reached():
            self.stop("deadline")
            return None
        refines = None
        if self._round > 0:
            refines = (self._candidate, self._round - 1, self.reasoning_tokens)
        step = Step(self._candidate, self._round, self.reasoning_tokens, refines)
        self._pending = step
        self.decisions.append(Decision("run", step.key, "refine" if refines else "sample"))
        return step

    def observe(
        self,
        step: Step,
        confidence: float | None,
        *,
        pruned: bool = False,
        failed: bool = False,
        seconds: float = 0.0,
        refine_ok: bool = True,
    ) -> None:
        """Record what ``step`` produced (and the ``seconds`` it cost) and decide what comes next.
        ``refine_ok`` False: the critique does not know where the flaw is (``should_refine``), so a
        refinable attempt gives way to a fresh candidate instead."""
        if self._pending is None or step.key != self._pending.key:
            raise RuntimeError(f"observe() got {step.key}, expected the pending step {self._pending}")
        self._pending = None
        if math.isfinite(seconds):
            self._spent_s += max(0.0, float(seconds))
        self._charged += 1
        cfg = self.config
        # A pruned candidate spent only its preview: it does not use up an attempt of the budget
        # (max_candidates still bounds how many are tried).
        if not pruned:
            self._used += 1
        if pruned or failed:
            if pruned:
                self.pruned.append(step.key)
            self.decisions.append(
                Decision(
                    "prune" if pruned else "new_candidate",
                    step.key,
                    "preview" if pruned else "backbone_failed",
                )
            )
            self._next_candidate()
            return
        self.confidences[step.key] = confidence if usable(confidence) else None
        c = confidence if usable(confidence) else None
        if cfg.early_stop and c is not None and c >= cfg.tau_high:
            self.decisions.append(Decision("accept", step.key, "confidence>=tau_high", c))
            self.stop("confident")
            return
        last_round = self._round + 1 >= cfg.s_max
        if cfg.fixed_rounds and not last_round:
            self.decisions.append(Decision("refine", step.key, "fixed_rounds", c))
            self._round += 1
        elif cfg.refine and not last_round and c is not None and c >= cfg.tau_low and refine_ok:
            self.decisions.append(Decision("refine", step.key, "tau_low<=confidence<tau_high", c))
            self._round += 1
        else:
            reason = "s_max" if last_round else ("confidence<tau_low" if cfg.refine else "no_refinement")
            if cfg.refine and not last_round and c is not None and c >= cfg.tau_low:
                reason = "critique_unsure_where"  # refine_ok False: a fresh candidate instead
            self.decisions.append(Decision("new_candidate", step.key, reason, c))
            self._next_candidate()

    def prunes(self, step: Step) -> bool:
        """Whether ``step`` is judged at its one-step preview: a fresh candidate, pruning switched on."""
        return self.config.prune_threshold is not None and step.round == 0

    def needs_verifier(self, first_stage: float | None) -> bool:
        """The cascade's rule: call the expensive verifier when the cheap-signal confidence is unknown
        or inside ``config.verify_band`` (always without a band)."""
        band = self.config.verify_band
        if band is None or first_stage is None or not math.isfinite(first_stage):
            return True
        return band[0] <= first_stage <= band[1]

    def should_prune(self, preview_confidence: float | None) -> bool:
        """Whether a candidate whose one-step preview scored ``preview_confidence`` is dropped."""
        thr = self.config.prune_threshold
        if thr is None or not usable(preview_confidence):
            return False
        return preview_confidence < thr  # type: ignore[operator]

    def best(self) -> Key | None:
        """The attempt with the highest usable confidence (ties: the earliest); None if none is usable."""
        best_key, best_c = None, -math.inf
        for key, c in self.confidences.items():
            if c is not None and c > best_c:
                best_key, best_c = key, c
        return best_key

    def _next_candidate(self) -> None:
        self._candidate += 1
        self._round = 0
