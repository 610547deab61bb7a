"""Small real predictors built in code for tests (untrained weights, real classes)."""

from __future__ import annotations

import torch

from ade_runtime.encoders import build_image_encoder, build_text_encoder
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.calibration import CalibrationConfig, Calibrator
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.predictors.features import RequestFeaturizer

# a two-layer DINOv2 config for tests (64 px, 8 px patches)
TINY_DINO = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 64,
}


def calibrator(bias: float, weight: float = 0.0, policy: PolicyConfig | None = None) -> Calibrator:
    """A logistic calibrator over clip_t: P = sigmoid(weight * clip_t + bias)."""
    cfg = CalibrationConfig(feature_names=("clip_t",), method="logistic", policy=policy or PolicyConfig())
    t = {
        "mean": torch.zeros(1),
        "scale": torch.ones(1),
        "weight": torch.tensor([weight]),
        "bias": torch.tensor([bias]),
    }
    return Calibrator(cfg, primary=t)


def card(levels=(1, 2, 4, 8), seed=0, beyond_budget: int | None = None) -> CardPredictor:
    torch.manual_seed(seed)
    feat = RequestFeaturizer(
        build_text_encoder({"kind": "hashing", "dim": 64}), build_image_encoder({"kind": "pixels"})
    )
    cfg = CardConfig(
        input_dim=feat.dim,
        levels=list(levels),
        token_levels=[0, 512],
        hidden=[16],
        beyond_budget=beyond_budget,
    )
    model = CardModel(cfg)
    return CardPredictor(model, feat)


def critique(
    image_spec: dict | None = None,
    kinds=("wrong_color", "no_change"),
    text_dim: int = 32,
    hidden: int = 16,
    trained: bool = False,
    **overrides,
):
    """An untrained critique head with real encoders (pixels + hashing text by default). ``trained``
    perturbs the image encoder's weights, standing for fine-tuned weights that must travel in the artifact."""
    from ade_runtime.predictors.critique import CritiqueConfig, CritiqueHead, CritiquePredictor

    ienc = build_image_encoder(image_spec or {"kind": "pixels"})
    tenc = build_text_encoder({"kind": "hashing", "dim": text_dim})
    overrides.setdefault("encoder_trained", trained)
    cfg = CritiqueConfig(
        kinds=tuple(kinds),
        token_dim=ienc.patch_dim,
        text_dim=tenc.dim,
        grid=ienc.patch_grid(),
        image_encoder=ienc.spec(),
        text_encoder=tenc.spec(),
        hidden=hidden,
        **overrides,
    )
    torch.manual_seed(0)
    head = CritiqueHead(cfg)
    if trained:
        with torch.no_grad():
            for p in ienc.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    return CritiquePredictor(head, ienc, tenc)
