"""Exact offline replay of policies over logged attempt grids.

The attempts of a trace already exist, so a policy can be replayed without running a
backbone: the session asks for an attempt, replay looks it up in the record, feeds back
its calibrated confidence, and charges its logged cost. Calibration chooses thresholds
this way and ``ade-replay`` compares policies this way. Every figure includes what the
policy's own checks cost (scoring, critique, previews), as Flash-BoN asks of verifiers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

from ade_runtime.offline.signals import AttemptSignals
from ade_runtime.policy.budget import pruned_nfe
from ade_runtime.policy.config import DEFAULT_PREVIEW_STEP, PolicyConfig, preset
from ade_runtime.policy.driver import Generated, Judged, Keep, drive
from ade_runtime.policy.session import Decision, Key, PolicySession, Step
from ade_runtime.traces.records import Attempt, EditRecord


@dataclass(frozen=True)
class Overhead:
    """Modelled cost of the controller's own work, in GPU-seconds per attempt it looks at."""

    score_s: float = 0.0  # cheap online scores of a finished attempt
    critique_s: float = 0.0  # critique head on a finished attempt (0 when the calibrator does not use it)
    preview_s: float = 0.0  # decoding and scoring a one-step preview
    verify_s: float = 0.0  # one call of the expensive verifier (a VLM reward model), when it runs


@dataclass
class Outcome:
    """What one policy did on one request."""

    id: str
    category: str | None
    chosen: Key | None
    score: float
    passed: bool
    nfe: float
    seconds: float
    attempts: int
    pruned: int
    stop_reason: str
    complete: bool = True
    missing: Key | None = None
    decisions: list[dict] = field(default_factory=list)
    verifier_calls: int = 0  # calls of the expensive verifier (charged overhead.verify_s each)


REFINEMENT_FEEDBACK = "refinement_feedback"  # record meta: who wrote the refinement rounds' prompts


def refinement_feedback(record: EditRecord) -> str:
    """Who wrote the prompts of ``record``'s refinement rounds: ``meta.refinement_feedback`` when the
    record says (the testbed generator writes ``"judge"``: the exact judge's flaws, an oracle no
    deployment has), ``"judge"`` for older testbed records that do not say, else ``"logged"`` (the
    prompts a deployment actually sent, e.g. ADE's critique in ``ade-collect`` traces)."""
    meta = record.meta or {}
    said = meta.get(REFINEMENT_FEEDBACK)
    if isinstance(said, str) and said:
        return said
    return "judge" if meta.get("testbed") is True else "logged"


def oracle_refinements(records: Iterable[EditRecord]) -> list[str]:
    """Ids of the records whose refinement rounds (round > 0) follow judge-written prompts: replaying a
    refinement on them credits feedback production cannot write (an upper bound, not a policy's value)."""
    return [
        r.id for r in records if refinement_feedback(r) == "judge" and any(a.round > 0 for a in r.attempts)
    ]


class ReplayError(ValueError):
    """A policy needs something the dataset does not have (judge labels, preview scores, attempts)."""


def _snap(levels: list[int], tokens: int) -> int:
    """The record's reasoning level closest to ``tokens`` (ties: the smaller)."""
    return min(levels, key=lambda t: (abs(t - tokens), t))


def _seconds(a: Attempt) -> float:
    return float(a.cost.latency_s) if a.cost.latency_s is not None else float("nan")


class LoggedSource:
    """A trace record as an attempt source (``policy.driver``): each attempt is looked up, its logged
    signals fed back, and its logged cost charged with the controller's modelled ``overhead``."""

    def __init__(
        self,
        record: EditRecord,
        config: PolicyConfig,
        confidence: Mapping[Key, float],
        *,
        preview: Mapping[Key, float] | None,
        overhead: Overhead,
        preview_step: int | None,
        first_stage: Mapping[Key, float] | None,
        refine_ok: Mapping[Key, bool] | None,
    ) -> None:
        self.grid = record.attempt_grid()
        self.config, self.confidence, self.preview = config, confidence, preview
        self.overhead, self.first_stage, self.refine_ok = overhead, first_stage, refine_ok
        self.verifies = first_stage is not None
        # NFE spent up to the preview: the record's meta.preview_nfe (CFG passes counted), else the step index
        self.preview_nfe = int(
            record.meta.get(
                "preview_nfe", preview_step or record.meta.get("preview_step", DEFAULT_PREVIEW_STEP)
            )
        )
        self.s_per_nfe = record.meta.get("s_per_nfe")
        self.nfe = self.total_s = 0.0
        self.calls = 0
        self._before = 0.0  # total seconds before the current attempt

    def generate(self, step: Step, keep: Keep | None) -> Generated | None:
        a = self.grid.get(step.key)
        if a is None:
            return None
        self._before = self.total_s
        if keep is not None:
            self.total_s += self.overhead.preview_s
            if not keep(self.preview.get(step.key) if self.preview is not None else None):
                spent = pruned_nfe(a.cost.nfe, self.preview_nfe)
                self.nfe += spent
                if isinstance(self.s_per_nfe, (int, float)):
                    # reasoning happens before denoising, so a pruned attempt still paid for it
                    self.total_s += _seconds(a) - (a.cost.nfe - spent) * float(self.s_per_nfe)
                else:
                    self.total_s += _seconds(a) * (spent / a.cost.nfe if a.cost.nfe else 0.0)
                return Generated(pruned=True)
        self.nfe += a.cost.nfe
        # every finished attempt is scored and critiqued: the calibrated confidence reads both
        self.total_s += _seconds(a) + self.overhead.score_s + self.overhead.critique_s
        return Generated()

    def judge(self, step: Step) -> Judged:
        ok = True if self.refine_ok is None else bool(self.refine_ok.get(step.key, True))
        table = self.first_stage if self.first_stage is not None else self.confidence
        return Judged(table.get(step.key), ok)

    def verify(self, step: Step) -> float | None:
        self.total_s += self.overhead.verify_s
        self.calls += 1
        return self.confidence.get(step.key)

    def select_value(self, step: Step, confidence: float | None) -> float | None:
        if self.config.select == "judge":  # the hindsight selector: the judge's label, not a confidence
            a = self.grid[step.key]
            return a.judge.score if a.judge is not None else None
        return confidence

    def seconds(self, step: Step) -> float:
        return self.total_s - self._before


def replay_record(
    record: EditRecord,
    config: PolicyConfig,
    confidence: Mapping[Key, float],
    *,
    budget: int | None = None,
    reasoning_tokens: int | None = None,
    preview: Mapping[Key, float] | None = None,
    overhead: Overhead = Overhead(),
    preview_step: int | None = None,
    max_seconds: float | None = None,
    first_stage: Mapping[Key, float] | None = None,
    refine_ok: Mapping[Key, bool] | None = None,
) -> Outcome:
    """Replay ``config`` on one record: the live loop's driver over a ``LoggedSource``.

    ``confidence`` maps attempt keys to calibrated P(pass); ``preview`` to the calibrated
    confidence of their one-step preview (needed when ``config.prune_threshold`` is set).
    ``first_stage`` (given when the verifier stack has an expensive verifier) maps keys to the
    confidence from the cheap signals alone: the expensive verifier is called, and charged
    ``overhead.verify_s``, when it lies in ``config.verify_band`` (always when the band is None);
    otherwise the attempt keeps its first-stage confidence, as the live cascade does. ``refine_ok``
    holds the critique's refine-or-fresh choice per attempt (``critique_signals``; None: always refine).
    ``budget``/``reasoning_tokens`` come from CARD when ``config.use_card``. ``max_seconds`` is the
    live loop's deadline (``PolicySession.deadline_reached``), charged with the logged seconds.
    """
    levels = sorted({a.reasoning_tokens for a in record.attempts})
    if config.use_card:
        if budget is None:
            raise ReplayError("this policy uses CARD: pass the request's attempt budget")
        attempts_budget = budget
        t = _snap(levels, reasoning_tokens if reasoning_tokens is not None else levels[0])
    else:
        attempts_budget = config.default_budget
        t = levels[0] if config.reasoning_tokens is None else _snap(levels, config.reasoning_tokens)
    if config.prune_threshold is not None and preview is None:
        raise ReplayError("pruning needs preview confidences; the dataset has no preview scores")
    if max_seconds is not None and any(a.cost.latency_s is None for a in record.attempts):
        raise ReplayError(
            f"record {record.id!r}: a deadline (max_seconds) needs cost.latency_s on every attempt"
        )
    session = PolicySession(config, attempts_budget, t, max_seconds=max_seconds)
    if config.use_card:  # the live loop logs CARD's choice first, too
        session.decisions.append(
            Decision("budget", None, f"card: {attempts_budget} attempts; {t} reasoning tokens")
        )
    source = LoggedSource(
        record,
        config,
        confidence,
        preview=preview,
        overhead=overhead,
        preview_step=preview_step,
        first_stage=first_stage,
        refine_ok=refine_ok,
    )
    missing = drive(session, source)
    chosen = session.best()
    if chosen is None:
        # No usable confidence: fall back to the first finished attempt (documented in the README).
        finished = [k for k in session.confidences]
        chosen = finished[0] if finished else None
    ja = source.grid[chosen].judge if chosen is not None else None
    score = float(ja.score) if ja is not None else (0.0 if chosen is None else float("nan"))
    return Outcome(
        id=record.id,
        category=record.category,
        chosen=chosen,
        score=score,
        passed=bool(ja.passed) if ja is not None else False,
        nfe=source.nfe,
        seconds=source.total_s,
        attempts=session.attempts_used,
        pruned=len(session.pruned),
        stop_reason=session.stop_reason or "done",
        complete=missing is None,
        missing=missing,
        decisions=[d.to_json() for d in session.decisions],
        verifier_calls=source.calls,
    )


def replay_oracle(record: EditRecord) -> Outcome:
    """The cheapest attempt that passes, paying for its refinement chain (an upper bound)."""
    grid = record.attempt_grid()
    best: tuple[float, float, Key] | None = None
    for key, a in grid.items():
        if a.judge is None:
            continue
        chain = [grid.get((key[0], r, key[2])) for r in range(key[1] + 1)]
        if any(x is None for x in chain):
            continue
        nfe = float(sum(x.cost.nfe for x in chain))  # type: ignore[union-attr]
        rank = (0 if a.judge.passed else 1, nfe, -a.judge.score)
        if best is None or rank < best[0]:
            best = (rank, nfe, key)  # type: ignore[assignment]
    if best is None:
        return Outcome(
            record.id, record.category, None, 0.0, False, 0.0, 0.0, 0, 0, "unjudged", complete=False
        )
    _, nfe, key = best
    chain = [grid[(key[0], r, key[2])] for r in range(key[1] + 1)]
    j = grid[key].judge
    return Outcome(
        id=record.id,
        category=record.category,
        chosen=key,
        score=float(j.score),  # type: ignore[union-attr]
        passed=bool(j.passed),  # type: ignore[union-attr]
        nfe=nfe,
        seconds=sum(_seconds(x) for x in chain),
        attempts=len(chain),
        pruned=0,
        stop_reason="oracle",
    )


def summarize(outcomes: list[Outcome]) -> dict:
    """Mean judge score, pass rate, NFE and GPU-seconds per request, overall and per category."""

    def stats(items: list[Outcome]) -> dict:
        n = len(items)
        if n == 0:
            return {"n": 0}
        secs = [o.seconds for o in items]
        return {
            "n": n,
            "mean_score": sum(o.score for o in items) / n,
            "pass_rate": sum(o.passed for o in items) / n,
            "nfe_per_request": sum(o.nfe for o in items) / n,
            "gpu_seconds_per_request": (sum(secs) / n) if all(math.isfinite(s) for s in secs) else None,
            "attempts_per_request": sum(o.attempts for o in items) / n,
            "verifier_calls_per_request": sum(o.verifier_calls for o in items) / n,
            "incomplete": sum(not o.complete for o in items),
        }

    out = stats(outcomes)
    cats = sorted({o.category or "uncategorised" for o in outcomes})
    out["by_category"] = {
        c: stats([o for o in outcomes if (o.category or "uncategorised") == c]) for c in cats
    }
    return out


SignalFn = Callable[[EditRecord], AttemptSignals]  # see policy.signals.record_signals
CardFn = Callable[[EditRecord], tuple[int, int]]  # rec -> (budget, tokens), e.g. BudgetPrediction.plan


def replay_signals(
    record: EditRecord,
    config: PolicyConfig,
    signals: AttemptSignals,
    plan: tuple[int, int] | None = None,
    *,
    overhead: Overhead = Overhead(),
    max_seconds: float | None = None,
) -> Outcome:
    """``replay_record`` with the record's ``AttemptSignals`` and CARD's ``plan`` (budget, tokens)."""
    budget, tokens = plan if plan is not None else (None, None)
    return replay_record(
        record,
        config,
        signals.confidence,
        budget=budget,
        reasoning_tokens=tokens,
        preview=signals.preview,
        overhead=overhead,
        max_seconds=max_seconds,
        first_stage=signals.first_stage,
        refine_ok=signals.refine_ok,
    )


def replay_policy(
    records: Iterable[EditRecord],
    name: str,
    base: PolicyConfig,
    signals: SignalFn,
    card: CardFn | None = None,
    overhead: Overhead = Overhead(),
    max_seconds: float | None = None,
) -> list[Outcome]:
    """Replay the named policy over records. ``signals(rec) -> AttemptSignals``, ``card(rec) -> (budget, tokens)``."""
    if name == "oracle":
        return [replay_oracle(r) for r in records]
    config = preset(name, base)
    if config.use_card and card is None:
        raise ReplayError(f"policy {name!r} uses CARD: pass a CARD predictor (budget per request)")
    outcomes = []
    for rec in records:
        if not any(a.judge is not None for a in rec.attempts):
            raise ReplayError(
                f"record {rec.id!r} has no judge labels; replay needs judged traces (see ade-judge)"
            )
        plan = card(rec) if (config.use_card and card is not None) else None
        outcomes.append(
            replay_signals(rec, config, signals(rec), plan, overhead=overhead, max_seconds=max_seconds)
        )
    return outcomes


def outcome_dict(o: Outcome) -> dict:
    d = asdict(o)
    d["chosen"] = list(o.chosen) if o.chosen is not None else None
    d["missing"] = list(o.missing) if o.missing is not None else None
    return d
