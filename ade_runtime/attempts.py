"""The live attempt source: a frozen backbone, the online scorers, the critique and the verifier cascade.

``LiveSource`` carries out the attempts a session asks for (``ade_runtime.policy.driver``): it builds
each attempt's prompt, input image and mask from the attempt it refines, runs the backbone (with a
one-step preview when the session prunes), scores and critiques the result and maps it to a
calibrated confidence, and calls the expensive verifier when the session's cascade rule asks. The
live loop drives it with a ``PolicySession``; ``ade-collect`` with a ``GridSession``. Failures never
lose a request: a failing scorer, critique, calibrator or verifier is recorded in ``failures`` and
the attempt keeps what was known; a backbone error ends the attempt as failed.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, Backbone, EditRequest
from ade_runtime.policy.driver import Generated, Judged, Keep
from ade_runtime.policy.session import Key, Step
from ade_runtime.policy.signals import CRITIQUE_FEATURE, first_stage_features, preview_confidence
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.verifiers.base import Verifier

Scorer = Callable[[Image.Image, Image.Image, str], dict[str, float]]


@dataclass
class AttemptLog:
    """One attempt that was run, with what it was judged online."""

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


def attempt_seed(base: int, candidate: int, round_: int) -> int:
    """The sampler seed of one attempt; ade-collect uses the same, so traces match live runs."""
    return base + 1000 * candidate + round_


class LiveSource:
    """Attempts of one request, run live. ``verifier`` is called where the session's cascade asks
    (pass None when the calibration does not read its score); ``use_mask`` confines a refinement to
    the critique's region when the backbone supports masks; ``preview_step`` is where a pruning
    session judges a fresh candidate."""

    def __init__(
        self,
        backbone: Backbone,
        request: EditRequest,
        predictors: Predictors,
        failures: list[dict],
        *,
        scorer: Scorer | None = None,
        verifier: Verifier | None = None,
        seed: int = 0,
        use_mask: bool = True,
        preview_step: int | None = None,
    ) -> None:
        self.backbone, self.request, self.predictors, self.failures = backbone, request, predictors, failures
        self.scorer, self.verifier, self.seed = scorer, verifier, seed
        self.use_mask, self.preview_step = use_mask, preview_step
        self.verifies = verifier is not None
        self.state = backbone.prepare(request)
        self.logs: dict[Key, AttemptLog] = {}
        self.order: list[AttemptLog] = []
        self.nfe = 0
        self.backbone_s = 0.0
        self._entry: AttemptLog | None = None
        self._failed_s = 0.0

    # -- generation -------------------------------------------------------------------------------
    def generate(self, step: Step, keep: Keep | None) -> Generated:
        request = self.request
        prev = self.logs.get(step.refines) if step.refines else None
        prompt, input_image, mask = request.instruction, None, None
        if prev is not None and prev.output is not None:
            prompt = prev.feedback or request.instruction
            input_image = prev.output.image
            if self.use_mask and self.backbone.supports_mask:
                mask = prev.mask
        preview = keep is not None and self.backbone.supports_preview
        sink: dict[str, Any] = {}
        spec = AttemptSpec(
            candidate=step.candidate,
            round=step.round,
            reasoning_tokens=step.reasoning_tokens,
            prompt=prompt,
            seed=attempt_seed(self.seed, step.candidate, step.round),
            input_image=input_image,
            mask=mask,
            preview_step=self.preview_step if preview else None,
            preview_fn=self._preview_fn(keep, sink) if preview else None,
        )
        entry = self._entry = AttemptLog(step=step, prompt=prompt, output=None)
        self.order.append(entry)
        t_run = time.perf_counter()
        try:
            out = self.backbone.run(self.state, spec)
        except Exception as exc:  # one failing attempt must not fail the request
            entry.error = f"{type(exc).__name__}: {exc}"
            self.failures.append(
                {
                    "stage": "backbone",
                    "key": list(step.key),
                    "error": entry.error,
                    "trace": traceback.format_exc(limit=3),
                }
            )
            self._failed_s = time.perf_counter() - t_run
            return Generated(failed=True)
        entry.output = out
        entry.overhead_s += sink.get("overhead_s", 0.0)
        self.nfe += int(out.nfe)
        self.backbone_s += float(out.latency_s)
        self.logs[step.key] = entry
        return Generated(pruned=bool(out.pruned or out.image is None))

    def _preview_fn(self, keep: Keep, sink: dict):
        request, scorer, calibrator = self.request, self.scorer, self.predictors.calibrator

        def keep_preview(preview: Image.Image, step_index: int) -> bool:
            t0 = time.perf_counter()
            scores = {}
            if scorer is not None:
                try:
                    scores = scorer(request.image, preview, request.instruction)
                except Exception:
                    scores = {}
            conf = preview_confidence(calibrator, scores)
            sink["preview_confidence"] = conf
            sink["overhead_s"] = sink.get("overhead_s", 0.0) + time.perf_counter() - t0
            return keep(conf)

        return keep_preview

    # -- judging ----------------------------------------------------------------------------------
    def judge(self, step: Step) -> Judged:
        """Scores, critique (feedback, region, refine-or-fresh) and the first-stage confidence."""
        entry, request = self._entry, self.request
        assert entry is not None and entry.output is not None and entry.output.image is not None
        image = entry.output.image
        t0 = time.perf_counter()
        if self.scorer is not None:
            try:
                entry.scores = {
                    k: float(v) for k, v in self.scorer(request.image, image, request.instruction).items()
                }
            except Exception as exc:
                self.failures.append({"stage": "score", "key": list(step.key), "error": repr(exc)})
        crit = self.predictors.critique
        if crit is not None:
            try:
                c = crit.predict(
                    request.image,
                    image,
                    request.instruction,
                    attention_mask=entry.output.attention_mask,
                    scores=first_stage_features(entry.scores),  # the cheap scores, as replay passes them
                )
                entry.critique_p = float(c.p_pass)
                entry.feedback = c.feedback
                entry.mask = c.mask
                entry.refine_ok = bool(crit.should_refine(c))
            except Exception as exc:
                self.failures.append({"stage": "critique", "key": list(step.key), "error": repr(exc)})
        entry.first_stage = entry.confidence = self._confidence(first_stage_features(entry.scores), step)
        entry.overhead_s += time.perf_counter() - t0
        return Judged(entry.confidence, entry.refine_ok)

    def verify(self, step: Step) -> float | None:
        """The expensive verifier's score added to the features; a failure keeps the first stage."""
        entry, request, verifier = self._entry, self.request, self.verifier
        assert entry is not None and entry.output is not None and verifier is not None
        t1 = time.perf_counter()
        try:
            verdict = verifier.verify(request.image, entry.output.image, request.instruction)
            entry.scores.update(verdict.scores)
            entry.verifier_calls.append(verdict.call_record(verifier.name, step.key))
            entry.confidence = self._confidence(entry.scores, step)
        except Exception as exc:  # a failing verifier leaves the first-stage confidence
            self.failures.append(
                {"stage": "verifier", "key": list(step.key), "error": repr(exc), "fallback": "first_stage"}
            )
        entry.overhead_s += time.perf_counter() - t1
        return entry.confidence

    def _confidence(self, scores: dict[str, float], step: Step) -> float | None:
        entry = self._entry
        critique_p = entry.critique_p if entry is not None else None
        feats = dict(scores)
        if critique_p is not None:
            feats[CRITIQUE_FEATURE] = critique_p
        cal = self.predictors.calibrator
        if cal is not None:
            try:
                p = float(cal.predict_proba(feats))
                return p if math.isfinite(p) else None
            except Exception as exc:
                self.failures.append({"stage": "calibration", "key": list(step.key), "error": repr(exc)})
        # Documented fallback: the critique's own probability, else no confidence (no early stop).
        return critique_p if critique_p is not None and math.isfinite(critique_p) else None

    def select_value(self, step: Step, confidence: float | None) -> float | None:
        return confidence  # live requests have no judge label: the confidence selects

    def seconds(self, step: Step) -> float:
        entry = self._entry
        if entry is None or entry.output is None:
            return self._failed_s
        return float(entry.output.latency_s) + entry.overhead_s
