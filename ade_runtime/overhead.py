"""Analytic cost of ADE's own work against one backbone step (FLOPs), for honest accounting.

Flash-BoN showed that a verifier's cost can eat a guided search's savings, so every
replay figure charges the controller: per finished attempt the cheap scores (a CLIP
ViT-L/14 image forward) and the critique (a DINOv2 ViT-B/14 forward plus the head), per
request CARD (text + image features and an MLP). FLOPs use the dense-transformer rule
2 x parameters x tokens plus 4 x layers x tokens^2 x width for attention; they are
converted to GPU-seconds through the backbone's measured or modelled seconds per NFE.

Parameter counts used (published):
- FLUX.1 Kontext [dev]: 12B-parameter rectified-flow transformer (BFL, "FLUX.1 Kontext",
  arXiv:2506.15742), 19 double + 38 single blocks, width 3072; at 1024^2 the 16-channel
  latent is 128 x 128, patchified 2 x 2 -> 4096 image tokens, plus 4096 context-image
  tokens and 512 T5 tokens.
- Step1X-Edit: 12B DiT with the same FLUX-style layout (Step1X-Edit report, arXiv:2504.17761).
- BAGEL: 7B active / 14B total MoT (arXiv:2505.14683); we count the 7B active parameters.
- DINOv2 ViT-B/14: 86M parameters, 12 layers, width 768, 257 tokens at 224^2 (Oquab et al. 2023).
- CLIP ViT-L/14: 304M vision parameters, 24 layers, width 1024, 257 tokens; text 123M, 77 tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ade_runtime.offline.replay import Overhead
from ade_runtime.traces.records import EditRecord


def transformer_flops(params: float, tokens: int, layers: int, width: int) -> float:
    """Forward FLOPs of a dense transformer: 2 N T for the weights plus 4 L T^2 d for attention."""
    return 2.0 * params * tokens + 4.0 * layers * tokens**2 * width


@dataclass(frozen=True)
class BackboneShape:
    params: float
    tokens: int
    layers: int
    width: int

    @property
    def flops_per_nfe(self) -> float:
        return transformer_flops(self.params, self.tokens, self.layers, self.width)


BACKBONE_SHAPES = {
    "flux-kontext": BackboneShape(params=12e9, tokens=4096 + 4096 + 512, layers=57, width=3072),
    "step1x-edit": BackboneShape(params=12e9, tokens=4096 + 4096 + 512, layers=57, width=3072),
    "bagel": BackboneShape(params=7e9, tokens=4096 + 4096 + 512, layers=28, width=3584),
}

DINOV2_B = transformer_flops(86e6, 257, 12, 768)
CLIP_L_IMAGE = transformer_flops(304e6, 257, 24, 1024)
CLIP_L_TEXT = transformer_flops(123e6, 77, 12, 768)
CRITIQUE_HEAD = 2.0 * 2.5e6 * 256  # ~2.5M-parameter head over 256 patch tokens
CARD_MLP = 2.0 * 1.0e6  # ~1M-parameter MLP on one feature vector


@dataclass(frozen=True)
class OverheadReport:
    """FLOPs of each piece of ADE's work and their ratio to one backbone NFE and one attempt."""

    backbone: str
    flops_per_nfe: float
    nfe_per_attempt: int
    score_flops: float
    critique_flops: float
    card_flops: float

    @property
    def per_attempt_flops(self) -> float:
        return self.score_flops + self.critique_flops

    @property
    def ratio_to_attempt(self) -> float:
        """Controller FLOPs per decision (score + critique) over one backbone attempt's FLOPs."""
        return self.per_attempt_flops / (self.flops_per_nfe * self.nfe_per_attempt)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_attempt_flops"] = self.per_attempt_flops
        d["ratio_to_attempt"] = self.ratio_to_attempt
        d["ratio_to_nfe"] = self.per_attempt_flops / self.flops_per_nfe
        return d


def analytic_overhead(backbone: str = "flux-kontext", nfe_per_attempt: int = 28) -> OverheadReport:
    shape = BACKBONE_SHAPES.get(backbone, BACKBONE_SHAPES["flux-kontext"])
    return OverheadReport(
        backbone=backbone,
        flops_per_nfe=shape.flops_per_nfe,
        nfe_per_attempt=nfe_per_attempt,
        score_flops=CLIP_L_IMAGE,  # the text embedding and the source embedding are computed once per request
        critique_flops=DINOV2_B + CRITIQUE_HEAD,  # source patch tokens are reused across attempts
        card_flops=DINOV2_B + CLIP_L_TEXT + CARD_MLP,
    )


def overhead_for(
    backbone: str, *, critique: bool, seconds_per_nfe: float | None, verify_s: float = 0.0
) -> Overhead:
    """Replay's per-attempt overhead in GPU-seconds for ``backbone`` (0 when seconds are unknown);
    ``verify_s`` is one call of the expensive verifier (``verifier_seconds``)."""
    if not seconds_per_nfe:
        return Overhead(verify_s=verify_s)
    rep = analytic_overhead(backbone)
    per_flop = seconds_per_nfe / rep.flops_per_nfe
    return Overhead(
        score_s=rep.score_flops * per_flop,
        critique_s=(rep.critique_flops * per_flop) if critique else 0.0,
        preview_s=rep.score_flops * per_flop,
        verify_s=verify_s,
    )


def verifier_seconds(records: Iterable[EditRecord]) -> float:
    """GPU-seconds per call of the expensive verifier the traces logged (``meta.reward_model``, as the
    testbed's emulated VLM reward model writes it, or ``meta.ade.verifier`` of a served request); 0 when none did."""
    for rec in records:
        meta = rec.meta if isinstance(rec.meta, dict) else {}
        ade = meta.get("ade") if isinstance(meta.get("ade"), dict) else {}
        for rm in (meta.get("reward_model"), ade.get("verifier")):
            if isinstance(rm, dict) and isinstance(rm.get("seconds_per_call"), (int, float)):
                return float(rm["seconds_per_call"])
    return 0.0


def seconds_per_nfe(records: Iterable[EditRecord], limit: int = 200) -> float | None:
    """Logged seconds per NFE over the first ``limit`` records' attempts (None when none has latency_s)."""
    num = den = 0.0
    for i, rec in enumerate(records):
        if i >= limit:
            break
        for a in rec.attempts:
            if a.cost.latency_s is not None and a.cost.nfe:
                num += a.cost.latency_s
                den += a.cost.nfe
    return num / den if den else None
