"""EditScore (Luo et al., 2025; github VectorSpaceLab/EditScore) as an online verifier.

EditScore is a family of VIEScore-style reward models (LoRA adapters on Qwen2.5-VL 7B / 32B / 72B
and Qwen3-VL 4B / 8B / 32B) behind the ``editscore`` package (``pip install 'ade-adaptive[editscore]'``,
an optional extra: it pulls torchvision, peft, qwen-vl-utils and, for its vLLM backends, vllm).
The call mapping follows the package's README and ``editscore/__init__.py`` (v0.2):
``EditScore(backbone=..., model_name_or_path=<base VLM>, lora_path=<EditScore weights>,
score_range=25, num_pass=1)``, then ``evaluate([source, edited], instruction)`` returns
``overall`` = sqrt(SC * PQ) on 0-10 (sub-scores ``prompt_following``, ``consistency``,
``perceptual_quality`` on 0-10). ADE's score is ``overall / 10`` in [0, 1].

When the model's answer cannot be parsed twice, EditScore substitutes a *random* score and marks
its reasoning ``guess_if_cannot_parse``; such a verdict is reported without scores
(``detail["failure"] = "malformed"``) rather than as a random number.

Cost: the measured wall seconds of ``evaluate`` (or the modelled ``VerifierCost``); FLOPs are not
known (the package does not report token counts) unless the modelled cost gives them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from PIL import Image

from ade_runtime.errors import BackboneUnavailableError, InputError
from ade_runtime.verifiers import VLM_FEATURE
from ade_runtime.verifiers.base import Verdict, VerifierCost
from ade_runtime.verifiers.metering import CostMeter, Metered

INSTALL = "pip install 'ade-adaptive[editscore]'"
# EditScore weights (LoRA) -> (base VLM, editscore backbone), from the package's evaluate_*.sh scripts
KNOWN = {
    "EditScore-7B": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen25vl"),
    "EditScore-32B": ("Qwen/Qwen2.5-VL-32B-Instruct", "qwen25vl"),
    "EditScore-72B": ("Qwen/Qwen2.5-VL-72B-Instruct", "qwen25vl"),
    "EditScore-Qwen3-VL-4B-Instruct": ("Qwen/Qwen3-VL-4B-Instruct", "qwen3vl"),
    "EditScore-Qwen3-VL-8B-Instruct": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3vl"),
    "EditScore-Qwen3-VL-32B-Instruct": ("Qwen/Qwen3-VL-32B-Instruct", "qwen3vl"),
}
BACKBONES = ("qwen25vl", "qwen25vl_vllm", "qwen3vl", "qwen3vl_vllm", "openai", "internvl3_5")
SUB_SCORES = ("prompt_following", "consistency", "perceptual_quality")


class EditScoreVerifier(Metered):
    """Expensive verifier through the ``editscore`` package (``editscore:<EditScore weights, id or path>``).

    ``base_model`` / ``backbone`` default from the weights' name for the published EditScore models
    (e.g. ``EditScore/EditScore-7B`` -> ``Qwen/Qwen2.5-VL-7B-Instruct`` with ``qwen25vl``);
    ``vllm=True`` picks the package's vLLM backend. Other keyword options go to ``EditScore(...)``.
    """

    def __init__(
        self,
        weights: str,
        *,
        base_model: str | None = None,
        backbone: str | None = None,
        vllm: bool = False,
        name: str | None = None,
        feature: str = VLM_FEATURE,
        cost: VerifierCost | None = None,
        score_range: int = 25,
        num_pass: int = 1,
        **editscore_opts: Any,
    ) -> None:
        try:
            from editscore import EditScore
        except ImportError as exc:
            raise BackboneUnavailableError(
                f"the editscore verifier needs the editscore package: {INSTALL}"
            ) from exc
        if not weights:
            raise InputError("editscore verifier: no weights; use --verifier editscore:<id or path>")
        known = KNOWN.get(weights.rstrip("/").rsplit("/", 1)[-1])
        if base_model is None:
            if known is None:
                raise InputError(
                    f"editscore verifier: {weights!r} is not a published EditScore model; give its base VLM "
                    f"with base_model=... (published: {', '.join(KNOWN)})"
                )
            base_model = known[0]
        backbone = backbone or (known[1] if known else "qwen25vl")
        if vllm and not backbone.endswith("_vllm"):
            backbone += "_vllm"
        if backbone not in BACKBONES:
            raise InputError(
                f"editscore verifier: backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}"
            )
        if score_range < 1 or num_pass < 1 or not feature:
            raise InputError(
                "editscore verifier: need score_range >= 1, num_pass >= 1 and a non-empty feature"
            )
        self.scorer = EditScore(
            backbone=backbone,
            model_name_or_path=base_model,
            lora_path=weights,
            score_range=score_range,
            num_pass=num_pass,
            **editscore_opts,
        )
        self.name, self.feature = name or f"editscore:{weights}", feature
        self.meter = CostMeter(cost)

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict:
        t0 = time.monotonic()
        out = self.scorer.evaluate([source.convert("RGB"), attempt.convert("RGB")], instruction)
        seconds = self.meter.charge(time.monotonic() - t0)
        flops = self.cost.flops
        detail: dict[str, Any] = {k: float(out[k]) for k in SUB_SCORES if k in out}
        reasoning = [str(out.get(k, "")) for k in ("SC_reasoning", "PQ_reasoning")]
        detail["reasoning"] = "\n---\n".join(reasoning)
        try:
            detail["overall"] = float(out["overall"])  # 0-10
        except (KeyError, TypeError, ValueError):
            detail["overall"] = math.nan
        value = detail["overall"] / 10.0
        if any(r.startswith("guess_if_cannot_parse") for r in reasoning) or not math.isfinite(value):
            message = "EditScore could not parse the model's answer (its score would be a random guess)"
            return Verdict({}, seconds, flops, {**detail, "failure": "malformed", "message": message})
        return Verdict({self.feature: min(1.0, max(0.0, value))}, seconds, flops, detail)
