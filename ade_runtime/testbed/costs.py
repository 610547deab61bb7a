"""Cost model of the backbones the testbed imitates (a TESTBED cost model, not a measurement).

Per-attempt NFE follows each model's default sampler; seconds per NFE are derived from
published end-to-end figures on one H100/H800-class GPU at 1024 x 1024, so every modelled
latency is APPROXIMATE. Reasoning ("thinking") tokens are decoded autoregressively before
sampling and cost seconds per token; the testbed lets every backbone use them (for FLUX and
Step1X-Edit read it as an external planner with BAGEL's decoding speed, an assumption).
"""

from __future__ import annotations

from dataclasses import dataclass

from ade_runtime.errors import InputError


@dataclass(frozen=True)
class BackboneCost:
    """NFE per full attempt, seconds per NFE and per reasoning token, fixed overhead per attempt."""

    name: str
    steps: int
    nfe_per_step: int
    s_per_nfe: float
    s_per_reasoning_token: float
    overhead_s: float
    preview_step: int

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.nfe_per_step <= 0:
            raise InputError(f"{self.name}: steps and nfe_per_step must be positive")
        if not 0 < self.preview_step < self.steps:
            raise InputError(f"{self.name}: preview_step must be within (0, steps)")

    @property
    def nfe(self) -> int:
        return self.steps * self.nfe_per_step

    def latency(self, nfe: int, reasoning_tokens: int) -> float:
        """Modelled seconds of one attempt that spent ``nfe`` evaluations (encode/decode included)."""
        return self.overhead_s + nfe * self.s_per_nfe + reasoning_tokens * self.s_per_reasoning_token


COSTS: dict[str, BackboneCost] = {
    # FLUX.1 Kontext [dev] (Labs et al. 2025, arXiv:2506.15742; diffusers FluxKontextPipeline default
    # num_inference_steps=28): guidance-distilled, so 1 transformer pass per step. The paper reports
    # 3-5 s per 1024^2 edit for Kontext on H100-class hardware; 0.14 s/NFE reproduces ~4 s (approximate).
    "flux-kontext": BackboneCost("flux-kontext", 28, 1, 0.14, 0.03, 0.3, preview_step=6),
    # Step1X-Edit (Liu et al. 2025, arXiv:2504.17761; README "Requirements" table): 28 steps with
    # real CFG (2 passes per step) take 22 s at 1024^2 with flash-attn on one H800 -> 22/56 = 0.39 s/NFE.
    "step1x-edit": BackboneCost("step1x-edit", 28, 2, 0.39, 0.03, 0.5, preview_step=6),
    # BAGEL (Deng et al. 2025, arXiv:2505.14683; inference defaults num_timesteps=50 with text and image
    # CFG -> 3 passes per step). Maintainers state ~5 s per 1024^2 generation on one H800 (Bagel issue #4,
    # text CFG only, 2 passes) -> 0.05 s/NFE (approximate). Thinking-token decoding at ~0.03 s/token for the
    # 7B-active MoT is an assumption (typical bf16 decode speed), not a published figure.
    "bagel": BackboneCost("bagel", 50, 3, 0.05, 0.03, 0.5, preview_step=10),
}


def get_cost(backbone: str) -> BackboneCost:
    if backbone not in COSTS:
        raise InputError(f"unknown testbed backbone {backbone!r}; choose one of {', '.join(COSTS)}")
    return COSTS[backbone]
