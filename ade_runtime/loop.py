"""The live adaptive loop: ADE's policy around a frozen editing backbone.

Per request: CARD sets the attempt budget and the reasoning budget; candidates are
explored depth-first; a candidate may be pruned from its one-step preview; every finished
attempt is scored, critiqued and given a calibrated confidence (through the verifier cascade: an
expensive verifier such as a VLM reward model is asked only when the cheap signals leave the
confidence inside ``PolicyConfig.verify_band``, and every call is counted); the request stops as soon
as the confidence reaches tau_high, otherwise the critique's feedback (and its region,
intersected with the SRM attention mask) drives the next refinement round; at the budget
the attempt with the highest confidence is returned. The decision rules are
``ade_runtime.policy.PolicySession``, the same ones offline replay calibrates, and every
request can be logged as a trace (format v1, judge empty) through the crash-safe writer.

Failures never lose a request: a missing or failing predictor falls back (fixed budget,
critique-free confidence), a backbone error on one attempt is recorded and the loop goes
on with the next candidate, and NaN/inf confidences never select an attempt.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, Backbone, EditRequest
from ade_runtime.errors import InputError
from ade_runtime.policy import Decision, Key, PolicyConfig, PolicySession, Step, preset
from ade_runtime.policy.replay import DEFAULT_PREVIEW_STEP, needs_verifier
from ade_runtime.policy.signals import (
    CRITIQUE_FEATURE,
    first_stage_features,
    preview_confidence,
    reads_verifier,
)
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces.records import EditRecord
from ade_runtime.verifiers.base import Verifier

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 2000
MIN_SIDE, MAX_SIDE = 16, 4096

Scorer = Callable[[Image.Image, Image.Image, str], dict[str, float]]


@dataclass
class AttemptLog:
    """One attempt the loop ran, with what it was judged online."""

    step: Step
    prompt: str
    output: AttemptOutput | None
    scores: dict[str, float] = field(default_factory=dict)
    critique_p: float | None = None
    confidence: float | None = None
    feedback: str | None = None
    mask: np.ndarray | None = None
    error: str | None = None
    overhead_s: float = 0.0
    first_stage: float | None = None  # the confidence from the cheap signals alone (the cascade's stage 1)
    refine_ok: bool = True  # the critique's refine-or-fresh choice (CritiquePredictor.should_refine)
    verifier_calls: list[dict] = field(default_factory=list)  # expensive-verifier calls on this attempt


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


def attempt_seed(base: int, candidate: int, round_: int) -> int:
    """The sampler seed of one attempt; ade-collect uses the same, so traces match live runs."""
    return base + 1000 * candidate + round_


def _named(request: EditRequest) -> str:
    """How messages name a request: its id, or "the request" when it has none of its own."""
    return f"request {request.id!r}" if request.id and request.id != "request" else "the request"


def validate_request(request: EditRequest) -> EditRequest:
    """Check the inputs with errors that say the fix; converts the image to RGB."""
    img = request.image
    if not isinstance(img, Image.Image):
        raise InputError(f"{_named(request)}: image must be a PIL.Image, got {type(img).__name__}")
    w, h = img.size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise InputError(
            f"{_named(request)}: image is {w}x{h}; each side must be between {MIN_SIDE} and {MAX_SIDE} px"
            " (resize it first)"
        )
    if img.mode not in ("RGB", "RGBA", "L", "P", "LA"):
        raise InputError(f"{_named(request)}: image mode {img.mode!r} is not supported; convert it to RGB")
    text = (request.instruction or "").strip()
    if not text:
        raise InputError(f"{_named(request)}: the instruction is empty; say what to edit")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputError(
            f"{_named(request)}: the instruction has {len(text)} characters; the limit is "
            f"{MAX_INSTRUCTION_CHARS} (shorten it or split it into several requests)"
        )
    rgb = img.convert("RGB") if img.mode != "RGB" else img
    return EditRequest(
        image=rgb, instruction=text, id=request.id, category=request.category, meta=request.meta
    )


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
                "vlm",
            )

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
            budget = int(pred.quantile(cfg.card_quantile))
            # a backbone without reasoning is unchanged: no tokens, whatever CARD would choose
            tokens = int(pred.reasoning_tokens) if self.backbone.supports_reasoning else 0
            if card_log is not None:
                card_log.update(pred.explain(cfg.card_quantile))
                card_log.update(
                    source="category_prior" if card.config.is_prior else "card",
                    reasoning_tokens=max(0, tokens),
                    supports_reasoning=bool(self.backbone.supports_reasoning),
                )
            return max(1, budget), max(0, tokens)
        except Exception as exc:  # a failing predictor must not fail the request
            failures.append({"stage": "card", "error": repr(exc), "fallback": "default_budget"})
            log.warning(
                "CARD failed on %s (%r); using the fixed budget %d", request.id, exc, cfg.default_budget
            )
            return cfg.default_budget, fixed_tokens

    # -- confidence -------------------------------------------------------------------------------
    def _judge_online(self, request: EditRequest, entry: AttemptLog, failures: list[dict]) -> None:
        out = entry.output
        assert out is not None and out.image is not None
        t0 = time.perf_counter()
        if self.scorer is not None:
            try:
                entry.scores = {
                    k: float(v) for k, v in self.scorer(request.image, out.image, request.instruction).items()
                }
            except Exception as exc:
                failures.append({"stage": "score", "key": list(entry.step.key), "error": repr(exc)})
        crit = self.predictors.critique
        if crit is not None:
            try:
                c = crit.predict(
                    request.image,
                    out.image,
                    request.instruction,
                    attention_mask=out.attention_mask,
                    scores=first_stage_features(entry.scores),  # the cheap scores, as replay passes them
                )
                entry.critique_p = float(c.p_pass)
                entry.feedback = c.feedback
                entry.mask = c.mask
                entry.refine_ok = bool(crit.should_refine(c))
            except Exception as exc:
                failures.append({"stage": "critique", "key": list(entry.step.key), "error": repr(exc)})
        # the cascade: the cheap signals first; the expensive verifier only inside the uncertain band
        first = self._confidence(
            first_stage_features(entry.scores), entry.critique_p, failures, entry.step.key
        )
        entry.first_stage = entry.confidence = first
        entry.overhead_s += time.perf_counter() - t0
        if self.verifier is not None and not self._verifier_unread and needs_verifier(self.config, first):
            t1 = time.perf_counter()
            try:
                verdict = self.verifier.verify(request.image, out.image, request.instruction)
                entry.scores.update(verdict.scores)
                entry.verifier_calls.append(verdict.call_record(self.verifier.name, entry.step.key))
                entry.confidence = self._confidence(entry.scores, entry.critique_p, failures, entry.step.key)
            except Exception as exc:  # a failing verifier leaves the first-stage confidence
                failures.append(
                    {
                        "stage": "verifier",
                        "key": list(entry.step.key),
                        "error": repr(exc),
                        "fallback": "first_stage",
                    }
                )
            entry.overhead_s += time.perf_counter() - t1

    def _confidence(
        self, scores: dict[str, float], critique_p: float | None, failures: list[dict], key
    ) -> float | None:
        cal = self.predictors.calibrator
        feats = dict(scores)
        if critique_p is not None:
            feats[CRITIQUE_FEATURE] = critique_p
        if cal is not None:
            try:
                p = float(cal.predict_proba(feats))
                return p if math.isfinite(p) else None
            except Exception as exc:
                failures.append({"stage": "calibration", "key": list(key), "error": repr(exc)})
        # Documented fallback: the critique's own probability, else no confidence (no early stop).
        return critique_p if critique_p is not None and math.isfinite(critique_p) else None

    def _preview_fn(self, request: EditRequest, session: PolicySession, sink: dict):
        def keep(preview: Image.Image, step_index: int) -> bool:
            t0 = time.perf_counter()
            scores = {}
            if self.scorer is not None:
                try:
                    scores = self.scorer(request.image, preview, request.instruction)
                except Exception:
                    scores = {}
            conf = preview_confidence(self.predictors.calibrator, scores)
            sink["preview_confidence"] = conf
            sink["overhead_s"] = sink.get("overhead_s", 0.0) + time.perf_counter() - t0
            return not session.should_prune(conf)

        return keep

    # -- the loop ---------------------------------------------------------------------------------
    # long function: the loop in one piece so its order of actions reads top to bottom; the rules live in PolicySession
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
        state = self.backbone.prepare(request)
        logs: dict[Key, AttemptLog] = {}
        order: list[AttemptLog] = []
        nfe = 0
        backbone_s = 0.0
        prune = self.config.prune_threshold is not None and self.backbone.supports_preview
        while (step := session.next_step()) is not None:
            prev = logs.get(step.refines) if step.refines else None
            prompt = request.instruction
            input_image = None
            mask = None
            if prev is not None and prev.output is not None:
                prompt = prev.feedback or request.instruction
                input_image = prev.output.image
                if self.config.use_mask and self.backbone.supports_mask:
                    mask = prev.mask
            sink: dict[str, Any] = {}
            spec = AttemptSpec(
                candidate=step.candidate,
                round=step.round,
                reasoning_tokens=step.reasoning_tokens,
                prompt=prompt,
                seed=attempt_seed(self.seed, step.candidate, step.round),
                input_image=input_image,
                mask=mask,
                preview_step=self._preview_step() if (prune and step.round == 0) else None,
                preview_fn=self._preview_fn(request, session, sink) if (prune and step.round == 0) else None,
            )
            entry = AttemptLog(step=step, prompt=prompt, output=None)
            t_run = time.perf_counter()
            try:
                out = self.backbone.run(state, spec)
            except Exception as exc:  # one failing attempt must not fail the request
                entry.error = f"{type(exc).__name__}: {exc}"
                failures.append(
                    {
                        "stage": "backbone",
                        "key": list(step.key),
                        "error": entry.error,
                        "trace": traceback.format_exc(limit=3),
                    }
                )
                order.append(entry)
                session.observe(step, None, failed=True, seconds=time.perf_counter() - t_run)
                continue
            entry.output = out
            entry.overhead_s += sink.get("overhead_s", 0.0)
            nfe += int(out.nfe)
            backbone_s += float(out.latency_s)
            logs[step.key] = entry
            order.append(entry)
            if out.pruned or out.image is None:
                session.observe(step, None, pruned=True, seconds=float(out.latency_s) + entry.overhead_s)
                continue
            # scores + critique -> calibrated confidence; the critique also writes the refinement prompt
            self._judge_online(request, entry, failures)
            session.observe(
                step,
                entry.confidence,
                seconds=float(out.latency_s) + entry.overhead_s,
                refine_ok=entry.refine_ok,
            )
        chosen = session.best()
        if chosen is None:
            # Documented fallback: no usable confidence -> the first attempt that produced an image.
            done = [e for e in order if e.output is not None and e.output.image is not None]
            chosen = done[0].step.key if done else None
        overhead += sum(e.overhead_s for e in order)
        best = logs.get(chosen) if chosen is not None else None
        return EditResult(
            image=best.output.image if best is not None and best.output is not None else None,
            chosen=chosen,
            confidence=best.confidence if best is not None else None,
            attempts=order,
            budget=budget,
            reasoning_tokens=tokens,
            decisions=[d.to_json() for d in session.decisions],
            stop_reason=session.stop_reason or "done",
            nfe=nfe,
            backbone_seconds=backbone_s,
            overhead_seconds=overhead,
            failures=failures,
            card=card_log or None,
            request=request,
            verifier=self.verifier_info(),
        )

    def _preview_step(self) -> int:
        # the backbone's own preview step, the one its traces log (replay charges the same NFE)
        return int(getattr(self.backbone, "preview_step", None) or DEFAULT_PREVIEW_STEP)
