"""The live adaptive loop: ADE's policy around a frozen editing backbone.

Per request: CARD sets the attempt budget and the reasoning budget; candidates are
explored depth-first; a candidate may be pruned from its one-step preview; every finished
attempt is scored, critiqued and given a calibrated confidence (through the verifier cascade: an
expensive verifier such as a VLM reward model is asked only when the cheap signals leave the
confidence inside ``PolicyConfig.verify_band``, and every call is counted); the request stops as soon
as the confidence reaches tau_high, otherwise the critique's feedback (and its region,
intersected with the SRM attention mask) drives the next refinement round; at the budget
the attempt with the highest confidence is returned. The decision rules are
``ade_runtime.policy.PolicySession``, and the attempt procedure is ``ade_runtime.policy.driver.drive``
over a ``LiveSource`` (``ade_runtime.attempts``): replay and calibration run the same driver over a
logged source, so what they measure is what the loop does. Every request can be logged as a trace
(format v1, judge empty) through the crash-safe writer.

Failures never lose a request: a missing or failing predictor falls back (fixed budget,
critique-free confidence), a backbone error on one attempt is recorded and the loop goes
on with the next candidate, and NaN/inf confidences never select an attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.attempts import AttemptLog, LiveSource, Scorer
from ade_runtime.backbones.base import Backbone, EditRequest
from ade_runtime.policy import Decision, Key, PolicyConfig, PolicySession, preset
from ade_runtime.policy.config import DEFAULT_PREVIEW_STEP
from ade_runtime.policy.driver import drive
from ade_runtime.policy.signals import VLM_FEATURE, reads_verifier
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.requests import validate_request
from ade_runtime.traces.records import EditRecord
from ade_runtime.verifiers.base import Verifier

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    """The answer to one request and everything it cost."""

    image: Image.Image | None
    chosen: Key | None
    confidence: float | None
    attempts: list[AttemptLog]
    budget: int
    reasoning_tokens: int
    decisions: list[dict]
    stop_reason: str
    nfe: int
    backbone_seconds: float
    overhead_seconds: float
    failures: list[dict]
    card: dict | None = None  # CARD's budget and token choice with its inputs (None: CARD not used)
    verifier: dict | None = None  # the expensive verifier in the stack: name, feature, cost per call
    claim: dict | None = None  # what calibration certified for the policy served (None: uncalibrated)
    request: EditRequest | None = None  # the validated request (RGB image, trimmed instruction)
    record: EditRecord | None = None  # the trace record, once logged

    @property
    def seconds(self) -> float:
        return self.backbone_seconds + self.overhead_seconds

    @property
    def verifier_calls(self) -> list[dict]:
        """Every expensive-verifier call of the request, in order, with its cost."""
        return [c for a in self.attempts for c in a.verifier_calls]

    @property
    def verifier_seconds(self) -> float:
        """GPU-seconds the expensive verifier was charged (its modelled cost, or measured wall time)."""
        return float(sum(c["seconds"] for c in self.verifier_calls))

    def summary(self) -> dict:
        """The JSON summary ``ade-edit --json`` prints and ``ade-serve`` answers with."""
        return {
            "chosen": list(self.chosen) if self.chosen is not None else None,
            "confidence": self.confidence,
            "budget": self.budget,
            "reasoning_tokens": self.reasoning_tokens,
            "card": self.card,  # CARD's budget and token choice and why (None: CARD not used)
            "decisions": self.decisions,  # the decision log, the budget/token choice first
            "attempts": len(self.attempts),
            "pruned": sum(1 for a in self.attempts if a.output is not None and a.output.pruned),
            "stop_reason": self.stop_reason,
            "nfe": self.nfe,
            "backbone_seconds": round(self.backbone_seconds, 4),
            "overhead_seconds": round(self.overhead_seconds, 4),
            "failures": [{k: v for k, v in f.items() if k != "trace"} for f in self.failures],
        }


def budget_reason(card: dict) -> str:
    """One line for the decision log: which budget and tokens CARD chose and why."""
    why = (
        f"hopeless (P(beyond)={card['p_beyond']:.2f}): give-up budget {card['budget']}, best attempt so far returned"
        if card.get("hopeless")
        else f"quantile {card['quantile']:g} of the need: {card['budget']} attempts"
    )
    tok = f"; {card['reasoning_tokens']} reasoning tokens"
    if card.get("token_pass") and card.get("supports_reasoning"):
        tok += f" (P(pass) by tokens {card['token_pass']}, gain per cost >= {card['gain_per_cost']:g})"
    src = {
        "prior:given": f" (the request's category {card.get('category')!r})",
        "prior:inferred": f" (category inferred from the request: {card.get('category')!r}, "
        f"p={card.get('category_confidence', float('nan')):.2f}, a mixture over the categories)",
        "prior:all": " (no category and no classifier: the all-categories row)",
    }.get(card.get("budget_source"), "")
    return f"{card.get('source', 'card')}{src}: {why}{tok}"


class AdaptiveEditor:
    """ADE around one backbone. ``policy`` is a PolicyConfig or a policy name (``ade``, ``best_of_8`` ...)."""

    def __init__(
        self,
        backbone: Backbone,
        predictors: Predictors | None = None,
        policy: PolicyConfig | str = "ade",
        scorer: Scorer | None = None,
        seed: int = 0,
        max_seconds: float | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.backbone = backbone
        self.predictors = predictors or Predictors()
        base = self.predictors.policy or PolicyConfig()
        self.config = preset(policy, base) if isinstance(policy, str) else policy
        self.scorer = scorer
        self.seed = seed
        self.max_seconds = max_seconds  # default deadline per request (PolicySession.deadline_reached)
        self.verifier = verifier  # the expensive verifier (VLM reward model) of the cascade, if any
        self._verifier_unread = verifier is not None and not reads_verifier(self.predictors.calibrator)
        if self._verifier_unread:
            log.warning(
                "verifier %r is loaded but the calibration does not read its score (%r): it is not called; "
                "calibrate on traces that carry it (ade-train calibrate)",
                getattr(verifier, "name", verifier),
                VLM_FEATURE,
            )

    def claim(self) -> dict | None:
        """The certified claim of the calibrated thresholds, when this loop serves them (``meta.ade.claim``);
        a preset policy (``best_of_8``, ...) or thresholds set by hand carry none."""
        claim = self.predictors.claim()
        if claim is None or self.config != self.predictors.policy:
            return None
        return dict(claim)

    def verifier_info(self) -> dict | None:
        """What traces record of the expensive verifier (``meta.ade.verifier``)."""
        v = self.verifier
        if v is None:
            return None
        cost = getattr(v, "cost", None)
        return {
            "name": getattr(v, "name", type(v).__name__),
            "seconds_per_call": float(getattr(cost, "seconds", 0.0) or 0.0),
            "flops_per_call": getattr(cost, "flops", None),
            "cost_source": getattr(cost, "source", ""),
            "called": not self._verifier_unread,
        }

    # -- budget -----------------------------------------------------------------------------------
    def _budget(
        self, request: EditRequest, failures: list[dict], card_log: dict | None = None
    ) -> tuple[int, int]:
        cfg = self.config
        card = self.predictors.card
        fixed_tokens = (cfg.reasoning_tokens or 0) if self.backbone.supports_reasoning else 0
        if not cfg.use_card:
            return cfg.default_budget, fixed_tokens
        if card is None:
            failures.append(
                {"stage": "card", "error": "no CARD predictor loaded", "fallback": "default_budget"}
            )
            return cfg.default_budget, fixed_tokens
        try:
            pred = card.predict(request.instruction, request.image, category=request.category)
            budget, tokens = pred.plan(cfg.card_quantile, self.backbone.supports_reasoning, cfg.card_cap)
            if card_log is not None:
                card_log.update(pred.explain(cfg.card_quantile, cfg.card_cap))
                card_log.update(
                    source="category_prior" if card.config.is_prior else "card",
                    reasoning_tokens=tokens,
                    supports_reasoning=bool(self.backbone.supports_reasoning),
                )
            return budget, tokens
        except Exception as exc:  # a failing predictor must not fail the request
            failures.append({"stage": "card", "error": repr(exc), "fallback": "default_budget"})
            log.warning(
                "CARD failed on %s (%r); using the fixed budget %d", request.id, exc, cfg.default_budget
            )
            return cfg.default_budget, fixed_tokens

    # -- the loop ---------------------------------------------------------------------------------
    def edit(self, request: EditRequest, *, max_seconds: float | None = None) -> EditResult:
        """Run the loop on one request; ``max_seconds`` (default: the editor's) caps its compute in
        backbone + controller seconds: when the next attempt would exceed it, the best so far is
        returned with stop reason ``deadline``."""
        request = validate_request(request)
        deadline = max_seconds if max_seconds is not None else self.max_seconds
        failures: list[dict] = self.predictors.fallbacks()  # recorded in every trace (meta.ade)
        t_overhead = time.perf_counter()
        card_log: dict[str, Any] = {}
        budget, tokens = self._budget(request, failures, card_log)
        session = PolicySession(self.config, budget, tokens, max_seconds=deadline)
        if card_log:
            session.decisions.append(Decision("budget", None, budget_reason(card_log)))
        overhead = time.perf_counter() - t_overhead
        source = LiveSource(
            self.backbone,
            request,
            self.predictors,
            failures,
            scorer=self.scorer,
            verifier=None if self._verifier_unread else self.verifier,
            seed=self.seed,
            use_mask=self.config.use_mask,
            preview_step=self._preview_step(),
        )
        drive(session, source)
        chosen = session.best()
        if chosen is None:
            # Documented fallback: no usable confidence -> the first attempt that produced an image.
            done = [e for e in source.order if e.output is not None and e.output.image is not None]
            chosen = done[0].step.key if done else None
        overhead += sum(e.overhead_s for e in source.order)
        best = source.logs.get(chosen) if chosen is not None else None
        return EditResult(
            image=best.output.image if best is not None and best.output is not None else None,
            chosen=chosen,
            confidence=best.confidence if best is not None else None,
            attempts=source.order,
            budget=budget,
            reasoning_tokens=tokens,
            decisions=[d.to_json() for d in session.decisions],
            stop_reason=session.stop_reason or "done",
            nfe=source.nfe,
            backbone_seconds=source.backbone_s,
            overhead_seconds=overhead,
            failures=failures,
            card=card_log or None,
            request=request,
            verifier=self.verifier_info(),
            claim=self.claim(),
        )

    def _preview_step(self) -> int:
        # the backbone's own preview step, the one its traces log (replay charges the same NFE)
        return int(getattr(self.backbone, "preview_step", None) or DEFAULT_PREVIEW_STEP)
