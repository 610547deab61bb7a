"""Dependency-free encoders: HashingTextEncoder and PixelStatsEncoder (behaviour, specs, fingerprints)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ade_runtime.artifacts import CARD_NAME, load_artifact, save_artifact
from ade_runtime.encoders import (
    HashingTextEncoder,
    PixelStatsEncoder,
    build_encoder,
    build_image_encoder,
    build_text_encoder,
    encoders_from_feature_spec,
)
from ade_runtime.errors import ArtifactError, InputError


def test_hashing_shapes_norms_and_similarity():
    enc = HashingTextEncoder(dim=256)
    texts = [
        "Turn the red mug blue",
        "turn the red mug  BLUE",
        "Make the red cup blue",
        "Remove the dog from the beach",
        "",
        "!!!",
    ]
    x = enc.encode(texts)
    assert x.shape == (6, 256) and x.dtype == torch.float32
    norms = x.norm(dim=1)
    assert torch.allclose(norms[:4], torch.ones(4), atol=1e-5)
    assert norms[4] == 0 and norms[5] == 0  # no words -> zero vector, not NaN
    assert torch.allclose(x[0], x[1])  # case and whitespace do not matter
    sim = x[:4] @ x[:4].T
    assert sim[0, 2] > sim[0, 3] + 0.2  # paraphrase closer than an unrelated edit
    assert enc.encode([]).shape == (0, 256)


def test_hashing_handles_unicode_and_word_order():
    enc = HashingTextEncoder(dim=512, char_ngrams=None)
    a, b, c = enc.encode(["blue mug red", "red mug blue", "Färbe die Tasse blau 🎨"])
    assert torch.isfinite(c).all() and c.norm() > 0
    assert not torch.allclose(a, b)  # bigrams see the order
    uni = HashingTextEncoder(dim=512, word_ngrams=(1, 1), char_ngrams=None)
    a1, b1 = uni.encode(["blue mug red", "red mug blue"])
    assert torch.allclose(a1, b1)  # unigrams alone do not


def test_hashing_is_stable_across_processes():
    code = (
        "from ade_runtime.encoders import HashingTextEncoder as H;"
        "e=H(dim=64);print(e.fingerprint);print(','.join(f'{v:.6f}' for v in e.encode(['Turn the mug blue'])[0]))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(s)},
        ).stdout
        for s in (1, 2)
    ]
    assert runs[0] == runs[1]
    enc = HashingTextEncoder(dim=64)
    fp, vec = runs[0].splitlines()
    assert fp == enc.fingerprint
    assert np.allclose(
        [float(v) for v in vec.split(",")], enc.encode(["Turn the mug blue"])[0].numpy(), atol=1e-6
    )


def test_hashing_spec_round_trip_and_fingerprint_sensitivity():
    enc = HashingTextEncoder(dim=128, word_ngrams=(1, 3), char_ngrams=(2, 4))
    again = build_text_encoder(enc.spec())
    assert again == enc and again.fingerprint == enc.fingerprint
    assert build_encoder(enc.spec()).fingerprint == enc.fingerprint
    fps = {
        enc.fingerprint,
        HashingTextEncoder(dim=256, word_ngrams=(1, 3), char_ngrams=(2, 4)).fingerprint,
        HashingTextEncoder(dim=128, word_ngrams=(1, 2), char_ngrams=(2, 4)).fingerprint,
        HashingTextEncoder(dim=128, word_ngrams=(1, 3), char_ngrams=None).fingerprint,
    }
    assert len(fps) == 4
    assert enc.fingerprint.startswith("hashing-")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dim": 1}, "HashingTextEncoder: dim must be an int >= 2, got 1"),
        (
            {"word_ngrams": (2, 1)},
            "HashingTextEncoder: word_ngrams must be (lo, hi) with 1 <= lo <= hi or None, got (2, 1)",
        ),
        (
            {"word_ngrams": None, "char_ngrams": None},
            "HashingTextEncoder: word_ngrams and char_ngrams are both None; enable one",
        ),
    ],
)
def test_hashing_config_errors(kwargs, message):
    with pytest.raises(InputError) as err:
        HashingTextEncoder(**kwargs)
    assert str(err.value) == message


def test_builders_reject_bad_specs():
    with pytest.raises(InputError, match=r"unknown kind 'bow'; use one of \['hashing', 'hf'\]"):
        build_text_encoder({"kind": "bow"})
    with pytest.raises(InputError, match="bad field in 'pixels' spec"):
        build_image_encoder({"kind": "pixels", "colour": True})
    with pytest.raises(InputError, match="an encoder spec is a dict with a 'kind' key"):
        build_image_encoder({"size": 64})
    with pytest.raises(InputError, match="got a single str"):
        HashingTextEncoder().encode("a string")


def _scene(color, box=(16, 16, 48, 48), size=96):
    img = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(img).rectangle([int(v * size / 64) for v in box], fill=color)
    return img


def test_pixels_descriptor_shapes_and_sense():
    enc = PixelStatsEncoder()
    assert enc.dim == 3 * 8 + 4 * 16 + 7 == 95
    imgs = [
        _scene((200, 20, 20)),
        _scene((20, 20, 200)),
        _scene((205, 25, 20)),
        np.asarray(_scene((20, 200, 20))),
    ]
    x = enc.encode(imgs)
    assert x.shape == (4, enc.dim) and torch.isfinite(x).all()
    d = torch.cdist(x, x)
    assert d[0, 2] < d[0, 1] and d[0, 2] < d[0, 3]  # near-identical red scenes closest
    hist = x[:, :24].reshape(4, 3, 8)
    assert torch.allclose(hist.sum(-1), torch.ones(4, 3), atol=1e-5)  # each channel histogram sums to 1
    plain = enc.encode([Image.new("RGB", (64, 64), (10, 10, 10))])
    assert plain[0, -1] == 0  # a flat image has no edges
    assert enc.encode([]).shape == (0, enc.dim)


def test_pixels_patches_locate_a_change():
    enc = PixelStatsEncoder(size=64, patches=8)
    a = _scene((200, 20, 20), box=(0, 0, 16, 16), size=64)
    b = _scene((200, 20, 20), box=(0, 0, 16, 16), size=64)
    ImageDraw.Draw(b).rectangle([48, 48, 63, 63], fill=(0, 0, 255))  # bottom-right change
    p = enc.encode_patches([a, b])
    assert p.shape == (2, 64, enc.patch_dim) and enc.patch_grid() == (8, 8)
    diff = (p[0] - p[1]).abs().sum(-1).reshape(8, 8)
    changed = diff > 1e-6
    assert changed[6:, 6:].all() and not changed[:4, :4].any()


def test_pixels_spec_round_trip_and_errors():
    enc = PixelStatsEncoder(size=32, bins=4, grid=2, patches=4)
    again = build_image_encoder(enc.spec())
    assert again == enc and again.fingerprint == enc.fingerprint != PixelStatsEncoder().fingerprint
    with pytest.raises(InputError, match="size 64 must be divisible by grid 5"):
        PixelStatsEncoder(grid=5)
    with pytest.raises(InputError, match="image 0 is str, expected a PIL image"):
        enc.encode(["x.png"])


def test_encoders_in_an_artifact_feature_spec(tmp_path):
    text, image = HashingTextEncoder(dim=64), PixelStatsEncoder()
    save_artifact(
        tmp_path,
        CARD_NAME,
        kind="card",
        class_name="CardPredictor",
        config={},
        tensors={"w": torch.ones(2)},
        feature_spec={"encoders": {"text": text, "image": image}, "text_dim": text.dim},
    )
    art = load_artifact(tmp_path, CARD_NAME, encoder_fingerprints={"text": text, "image": image.fingerprint})
    assert art.encoder_fingerprints == {"text": text.fingerprint, "image": image.fingerprint}
    rebuilt = encoders_from_feature_spec(art.feature_spec)
    assert rebuilt["text"] == text and rebuilt["image"] == image
    with pytest.raises(
        ArtifactError, match="encoder mismatch: the artifact was trained with text encoder hashing-"
    ):
        load_artifact(tmp_path, CARD_NAME, encoder_fingerprints={"text": HashingTextEncoder(dim=32)})
