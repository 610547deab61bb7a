"""Judged trace datasets and tiny exported predictors for the ``ade-train calibrate`` tests (built in code)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ade_runtime.encoders import build_image_encoder, build_text_encoder
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.predictors.critique import CritiqueConfig, CritiqueHead, CritiquePredictor
from ade_runtime.predictors.features import RequestFeaturizer
from ade_runtime.traces import Attempt, Cost, EditRecord, Judge, TraceWriter
from ade_train.export import DataInfo, PredictorSection, export_predictors

N_REQUESTS = 160
# the calibration tests pin the relative form against Best-of-8 (still an option); the margin default and
# the best Best-of-N reference have their own tests (test_calibration_margin.py)
RELATIVE = dict(risk="relative", reference_policy="best_of_8")
GRID = {"tau_high": [0.5, 0.7, 0.9], "tau_low": [0.0, 0.2], "s_max": [1, 3], "card_quantile": [0.5, 0.95]}


def write_dataset(root, n=N_REQUESTS, seed=0, previews=True, images=False):
    """Requests of random difficulty; 4 candidates x 3 rounds; scores track the (hidden) quality."""
    rng = np.random.default_rng(seed)
    with TraceWriter(root, fsync=False) as w:
        for i in range(n):
            rid = f"req-{i:04d}"
            src = w.write_image(f"images/{rid}/source.png", Image.new("RGB", (16, 16), (i % 255, 40, 90)))
            difficulty = rng.uniform(0, 1)
            attempts = []
            for c in range(4):
                base = rng.normal(0.55, 0.25)
                for r in range(3):
                    q = base + 0.2 * r - difficulty
                    scores = {
                        "clip_t": 0.25 + 0.1 * q + rng.normal(0, 0.03),
                        "clip_i": 0.85 + rng.normal(0, 0.03),
                    }
                    if previews:
                        scores["preview_clip_t"] = scores["clip_t"] + rng.normal(0, 0.03)
                        scores["preview_clip_i"] = scores["clip_i"] + rng.normal(0, 0.03)
                    passed = bool(q + rng.normal(0, 0.1) > 0.15)
                    image = None
                    if images and c < 3:  # candidate 3 logs no image: the critique cannot see it
                        shade = int(np.clip(128 + 200 * q, 0, 255))
                        image = w.write_image(
                            f"images/{rid}/c{c}_r{r}.png",
                            Image.new("RGB", (16, 16), (shade, 60, 255 - shade)),
                        )
                    attempts.append(
                        Attempt(
                            candidate=c,
                            round=r,
                            reasoning_tokens=0,
                            prompt="make the square blue",
                            cost=Cost(nfe=28, latency_s=4.0),
                            image=image,
                            scores=scores,
                            judge=Judge(score=float(1 / (1 + math.exp(-4 * q))), passed=passed),
                        )
                    )
            w.write(EditRecord(rid, "make the square blue", src, "synthetic", attempts, category="color"))
    return root


def export_tiny_card(out):
    """A tiny, untrained CARD (levels of the 4x3 grid) exported where ade-train card would put it."""
    fz = RequestFeaturizer(
        build_text_encoder({"kind": "hashing", "dim": 32}),
        build_image_encoder({"kind": "pixels", "size": 16}),
    )
    torch.manual_seed(0)
    model = CardModel(
        CardConfig(input_dim=fz.dim, levels=[1, 2, 3, 4, 6, 8, 9, 12], token_levels=[0], hidden=[8])
    )
    model.set_feature_stats(torch.randn(16, fz.dim))
    card = CardPredictor(model, fz)
    data = DataInfo(path="in-code", fingerprint="sha256:test", source="testbed", n_records=N_REQUESTS)
    export_predictors(out, [(PredictorSection(name="card", title="CARD", data=data), card.save_pretrained)])
    return card


def export_tiny_critique(out):
    """A tiny, untrained critique head over pixel-statistics patches, exported into OUT/export."""
    image_enc = build_image_encoder({"kind": "pixels", "size": 16, "patches": 4})
    text_enc = build_text_encoder({"kind": "hashing", "dim": 32})
    config = CritiqueConfig(
        kinds=("wrong_color",),
        token_dim=image_enc.patch_dim,
        text_dim=text_enc.dim,
        grid=image_enc.patch_grid(16),
        image_encoder=image_enc.spec(),
        text_encoder=text_enc.spec(),
        hidden=8,
        n_blocks=1,
    )
    torch.manual_seed(0)
    critique = CritiquePredictor(CritiqueHead(config), image_enc, text_enc)
    data = DataInfo(path="in-code", fingerprint="sha256:test", source="testbed", n_records=N_REQUESTS)
    export_predictors(
        out, [(PredictorSection(name="critique", title="critique", data=data), critique.save_pretrained)]
    )
    return critique
