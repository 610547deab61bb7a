"""Critique head runtime: artifact round trips, prediction on testbed images, encoder checks.

Tiny DINOv2 models are built from configs in code (scratch) or saved with save_pretrained to
tmp_path and loaded by path (frozen); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import helpers.predictors as helper_predictors
import numpy as np
import pytest
import torch
from helpers import FIXTURES
from helpers.predictors import TINY_DINO
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ade_runtime.encoders import build_image_encoder
from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.feedback import REGION_BOXES
from ade_runtime.predictors.critique import (
    Critique,
    CritiqueConfig,
    CritiquePredictor,
    crop_window,
    flaw_regions,
    from_view,
    to_view,
)
from ade_runtime.traces.records import Flaw

KINDS = ("leakage", "no_change", "wrong_color")
FIXTURE = FIXTURES / "testbed_small"


@pytest.fixture(scope="module")
def testbed_data() -> dict:
    from ade_runtime.traces import load_records

    records, rejects = load_records(FIXTURE, images="none")
    assert records and not rejects
    return {"records": records}


def _scratch_encoder_spec() -> dict:
    return {"kind": "dinov2", "config": TINY_DINO, "image_size": 64, "resize_size": 64, "seed": 3}


def _saved_dino(path: Path, seed: int) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = {k: v for k, v in TINY_DINO.items() if k != "model_type"}
    Dinov2Model(Dinov2Config(**cfg)).save_pretrained(path)
    return path


def _predictor(image_spec: dict, trained: bool, **overrides) -> CritiquePredictor:
    return helper_predictors.critique(
        image_spec, kinds=KINDS, text_dim=64, hidden=32, trained=trained, **overrides
    )


def _images(size: int = 80) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = src.copy()
    out[10:40, 40:75] = (40, 80, 220)
    return Image.fromarray(src), Image.fromarray(out)


def _all_tensors(pred: CritiquePredictor) -> dict[str, torch.Tensor]:
    return pred.state_tensors()


@pytest.mark.parametrize("trained", [True, False])
def test_round_trip_every_tensor_and_file_set(tmp_path, trained):
    if trained:
        pred = _predictor(_scratch_encoder_spec(), trained=True)
    else:
        path = _saved_dino(tmp_path / "dino", seed=1)
        pred = _predictor({"kind": "dinov2", "model": str(path), "image_size": 64}, trained=False)
    out = tmp_path / "export"
    pred.save_pretrained(out, metrics={"test/auroc": 0.7})
    assert sorted(p.name for p in out.iterdir()) == ["critique.json", "critique.safetensors"]
    loaded = CritiquePredictor.from_pretrained(out)
    before, after = _all_tensors(pred), _all_tensors(loaded)
    assert sorted(before) == sorted(after)
    assert any(k.startswith("image_encoder.") for k in before) == trained
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    # a frozen encoder is referenced, not copied: its weights are re-read from the path
    if not trained:
        for k, v in pred.image_encoder.model.state_dict().items():
            assert torch.equal(v, loaded.image_encoder.model.state_dict()[k])
    meta = json.loads((out / "critique.json").read_text())
    assert meta["kind"] == "critique" and meta["config"]["kinds"] == list(KINDS)
    src, att = _images()
    a = pred.predict(src, att, "make the square blue")
    b = loaded.predict(src, att, "make the square blue")
    assert a.p_pass == pytest.approx(b.p_pass, abs=1e-6)
    np.testing.assert_allclose(a.flaw_map, b.flaw_map, atol=1e-6)


def test_frozen_encoder_fingerprint_mismatch_refused(tmp_path):
    path = _saved_dino(tmp_path / "dino", seed=1)
    pred = _predictor({"kind": "dinov2", "model": str(path), "image_size": 64}, trained=False)
    pred.save_pretrained(tmp_path / "export")
    _saved_dino(path, seed=2)  # the checkpoint at the path was replaced by other weights
    with pytest.raises(ArtifactError, match="encoder mismatch"):
        CritiquePredictor.from_pretrained(tmp_path / "export")


def test_predict_on_testbed_images_gives_mask_and_region_feedback(testbed_data):
    records = testbed_data["records"]
    rec = next(r for r in records if any(a.image for a in r.attempts))
    att = next(a for a in rec.attempts if a.image)
    src_img = Image.open(rec.resolve(rec.source_image))
    out_img = Image.open(rec.resolve(att.image))
    # an untrained head: "always fails", and no patch reaches the region threshold, so the region
    # comes from the patches standing out of the map (the forced fallback)
    pred = _predictor(_scratch_encoder_spec(), trained=True, pass_threshold=1.0, mask_threshold=0.999)
    c = pred.predict(src_img, out_img, rec.instruction)
    assert isinstance(c, Critique)
    width, height = out_img.size
    assert c.mask.shape == (height, width) and c.mask.dtype == np.float32
    assert 0.0 <= c.mask.min() and c.mask.max() == 1.0 and c.mask.mean() < 1.0
    assert c.flaw_map.shape == (len(KINDS), *pred.config.grid)
    assert np.all(c.flaw_map.sum(0) <= 1.0 + 1e-5)
    assert not c.passed and c.flaws and c.box is not None and c.flaws[0].kind in KINDS
    assert c.feedback.startswith(rec.instruction.strip().rstrip("."))
    assert any(region in c.feedback for region in REGION_BOXES)
    # an SRM attention mask joins the flaw mask (union by default)
    att_mask = np.zeros((height, width), np.float32)
    att_mask[:, : width // 4] = 1.0
    joined = pred.predict(src_img, out_img, rec.instruction, attention_mask=att_mask)
    assert np.all(joined.mask >= c.mask) and np.all(joined.mask >= att_mask)
    batch = pred.predict_batch([src_img, src_img], [out_img, src_img], [rec.instruction] * 2)
    assert len(batch) == 2 and batch[0].p_pass == pytest.approx(c.p_pass, abs=1e-6)


def test_bad_inputs_raise_input_error():
    pred = _predictor(_scratch_encoder_spec(), trained=True)
    src, att = _images()
    with pytest.raises(InputError, match="instructions"):
        pred.predict(src, att, "   ")
    with pytest.raises(InputError, match="PIL"):
        pred.predict(np.zeros((8, 8, 3)), att, "x")
    with pytest.raises(InputError, match="attention_mask"):
        pred.predict(src, att, "x", attention_mask=np.full((4, 4, 2), 0.5))
    with pytest.raises(InputError, match="kinds"):
        CritiqueConfig(kinds=("none", "a"), token_dim=4, text_dim=4, grid=(2, 2))
    with pytest.raises(InputError, match="mask_threshold"):
        CritiqueConfig(kinds=("a",), token_dim=4, text_dim=4, grid=(2, 2), mask_threshold=2.0)


def test_flaw_regions_boxes_and_view_mapping():
    fmap = np.zeros((2, 4, 4), np.float32)
    fmap[1, 0:2, 2:4] = 0.9  # kind "b" in the top-right quarter
    fmap[0, 3, 0] = 0.6  # a weaker single patch of kind "a", bottom-left
    found = flaw_regions(fmap, ("a", "b"), threshold=0.5, max_flaws=3)
    assert [f.kind for f, _ in found] == ["b", "a"]
    assert found[0][0].box == (0.5, 0.0, 1.0, 0.5) and found[0][1] == pytest.approx(0.9)
    assert flaw_regions(fmap * 0.1, ("a", "b"), threshold=0.5, max_flaws=3) == []
    forced = flaw_regions(fmap * 0.1, ("a", "b"), threshold=0.5, max_flaws=3, force=True)
    assert len(forced) == 1 and forced[0][0].kind == "b"
    # MagicBrush preprocessing (resize 256, crop 224) sees the central 7/8 of a square image
    enc = build_image_encoder({"kind": "dinov2", "config": TINY_DINO, "image_size": 56})
    window = crop_window(enc, 96, 96)
    assert window == pytest.approx((1 / 16, 1 / 16, 15 / 16, 15 / 16), abs=0.02)
    box = (0.3, 0.2, 0.6, 0.5)
    assert from_view(to_view(box, window), window) == pytest.approx(box)
    assert to_view((0.0, 0.0, 0.05, 0.05), window) is None
    assert Flaw("a", found[0][0].box).box == found[0][0].box
