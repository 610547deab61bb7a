"""CARD runtime: config checks, predictions, save/from_pretrained round trip, import isolation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.predictors import card
from PIL import Image

from ade_runtime.encoders import build_image_encoder, build_text_encoder
from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.predictors.budget_prediction import BudgetPrediction
from ade_runtime.predictors.card import CardConfig, CardPredictor
from ade_runtime.predictors.features import RequestFeaturizer


def _other_featurizer(dim: int = 32) -> RequestFeaturizer:
    """A featurizer the helper's CARD was not built with (other text dim, other image size)."""
    return RequestFeaturizer(
        build_text_encoder({"kind": "hashing", "dim": dim}),
        build_image_encoder({"kind": "pixels", "size": 32}),
    )


def _predictor(seed: int = 0) -> CardPredictor:
    """tests/helpers/predictors.card with non-trivial feature statistics (they must round-trip)."""
    predictor = card(seed=seed)
    predictor.model.set_feature_stats(torch.randn(20, predictor.featurizer.dim) * 3 + 1)
    return predictor


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="levels"):
        CardConfig(input_dim=4, levels=[4, 2])
    with pytest.raises(ValueError, match="input_dim"):
        CardConfig(input_dim=0, levels=[1])
    with pytest.raises(ValueError, match="dropout"):
        CardConfig(input_dim=4, levels=[1], dropout=1.0)
    with pytest.raises(ValueError, match="token_levels"):
        CardConfig(input_dim=4, levels=[1], token_levels=[])


def test_budget_prediction_quantiles():
    b = BudgetPrediction(
        levels=[1, 2, 4], probs=[0.5, 0.3, 0.1, 0.1], token_levels=[0, 64], token_probs=[0.2, 0.8]
    )
    # q = 0.95 falls in the beyond mass: a hopeless request gets the give-up budget, never the largest level
    assert [b.quantile(q) for q in (0.5, 0.8, 0.85, 0.95)] == [1, 2, 4, 1]
    assert not b.hopeless(0.9) and b.hopeless(0.95)
    assert b.reasoning_tokens == 64
    assert b.expected_level == pytest.approx(0.3 + 0.2 + 0.3)
    assert b.p_beyond == pytest.approx(0.1)


def test_predict_from_image_and_path(tmp_path):
    card = _predictor()
    img = Image.new("RGB", (40, 40), (10, 200, 30))
    img.save(tmp_path / "s.png")
    a = card.predict("make the square blue", img)
    b = card.predict("make the square blue", tmp_path / "s.png")
    assert a.probs == pytest.approx(b.probs)
    assert sum(a.probs) == pytest.approx(1.0) and len(a.probs) == 5
    assert a.quantile(0.9) in (1, 2, 4, 8)
    many = card.predict_many(["make the square blue", "add a hat"], [img, tmp_path / "s.png"])
    assert many[0].probs == pytest.approx(a.probs) and len(many) == 2
    with pytest.raises(InputError, match="instruction"):
        card.predict("  ", img)
    with pytest.raises(InputError, match="does not exist"):
        card.predict("x", tmp_path / "missing.png")
    with pytest.raises(InputError, match="features"):
        card.predict_features(torch.zeros(2, 3))


def test_save_load_round_trip_every_tensor_and_file_set(tmp_path):
    card = _predictor()
    card.save_pretrained(tmp_path, data_fingerprint="sha256:x", metrics={"test/spearman": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "card.safetensors"]
    loaded = CardPredictor.from_pretrained(tmp_path)
    want, got = card.model.state_dict(), loaded.model.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert loaded.config == card.config
    assert loaded.featurizer.fingerprints == card.featurizer.fingerprints
    x = card.featurizer.featurize(["add a red circle"], [Image.new("RGB", (32, 32))])
    assert torch.equal(card.predict_proba(x)[0], loaded.predict_proba(x)[0])
    meta = json.loads((tmp_path / "card.json").read_text())
    assert meta["kind"] == "card" and meta["metrics"] == {"test/spearman": 0.5}


def test_from_pretrained_refuses_other_encoders_and_bad_weights(tmp_path):
    _predictor().save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="encoder mismatch"):
        CardPredictor.from_pretrained(tmp_path, featurizer=_other_featurizer(dim=32))
    (tmp_path / "card.safetensors").write_bytes((tmp_path / "card.safetensors").read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="card.safetensors"):
        CardPredictor.from_pretrained(tmp_path)


def test_loading_card_imports_no_training_stack(tmp_path):
    _predictor().save_pretrained(tmp_path)
    code = (
        "import sys; from ade_runtime.predictors import CardPredictor; from PIL import Image\n"
        f"c = CardPredictor.from_pretrained({str(tmp_path)!r})\n"
        "b = c.predict('add a cat', Image.new('RGB', (32, 32)))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'wandb', 'sklearn', 'ade_train',"
        " 'pytorch_lightning'))\n"
        "print(b.quantile(0.8), bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().endswith("[]"), proc.stdout
