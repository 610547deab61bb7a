"""HF encoders with tiny real models built from configs in code (never downloaded), and the real MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere in this process

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ade_runtime.artifacts import CRITIQUE_NAME, load_artifact, save_artifact
from ade_runtime.encoders import (
    ClipVisionEncoder,
    Dinov2Encoder,
    HFTextEncoder,
    ImagePreprocess,
    build_image_encoder,
    build_text_encoder,
    encoders_from_feature_spec,
    minilm_path,
)
from ade_runtime.errors import ArtifactError, InputError

DINO = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
DINO_REG = {**DINO, "model_type": "dinov2_with_registers", "num_register_tokens": 4}
CLIP_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}
WORDS = "turn the red mug blue make cup remove dog from beach add a hat to cat sky green".split()
WORDLEVEL = {"kind": "wordlevel", "vocab": WORDS}
# eos = [SEP] (id 3) of the wordlevel tokenizer, so CLIP pools the right token
CLIP_TEXT = {
    "model_type": "clip_text_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 8,
    "projection_dim": 16,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "pad_token_id": 0,
}
BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 64,
}


def _img(color, size=(40, 30), box=(5, 5, 20, 20)):
    img = Image.new("RGB", size, (230, 230, 230))
    ImageDraw.Draw(img).rectangle(box, fill=color)
    return img


IMAGES = [_img((200, 0, 0)), _img((0, 0, 200)), _img((0, 180, 0), size=(30, 40))]


def test_preprocess_follows_the_recipe():
    pre = ImagePreprocess(resize=256, crop=224)
    x = pre([Image.new("RGB", (640, 480), (255, 128, 0))])
    assert x.shape == (1, 3, 224, 224)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expect = torch.tensor([(v / 255 - m) / s for v, m, s in zip((255, 128, 0), mean, std, strict=True)])
    assert torch.allclose(x[0, :, 100, 100], expect, atol=1e-5)
    # centre crop: a marker in the exact centre of a wide image stays in the centre
    wide = Image.new("RGB", (512, 256), (0, 0, 0))
    ImageDraw.Draw(wide).rectangle([250, 122, 261, 133], fill=(255, 255, 255))
    y = ImagePreprocess(resize=256, crop=224, normalization="clip")([wide])
    assert y[0, 0, 112, 112] > 1.0 and y[0, 0, 0, 0] < -1.0
    with pytest.raises(InputError, match="resize must be an int >= crop"):
        ImagePreprocess(resize=100, crop=224)


def test_dinov2_tiny_cls_patches_and_grid():
    enc = Dinov2Encoder(config=DINO, image_size=32)
    assert enc.preprocess.resize == 37 and enc.dim == enc.patch_dim == 32
    pooled, patches = enc.encode_both(IMAGES)
    assert pooled.shape == (3, 32) and patches.shape == (3, 16, 32) and enc.patch_grid() == (4, 4)
    assert torch.allclose(enc.encode(IMAGES), pooled) and torch.allclose(enc.encode_patches(IMAGES), patches)
    # the CLS token is what the model itself reports as pooled output
    pixels = enc.preprocess(IMAGES)
    with torch.no_grad():
        out = enc.model(pixel_values=pixels)
    assert torch.allclose(pooled, out.pooler_output, atol=1e-6)
    assert torch.allclose(patches, out.last_hidden_state[:, 1:], atol=1e-6)
    assert enc.encode([]).shape == (0, 32) and enc.encode_patches([]).shape == (0, 16, 32)
    assert (
        Dinov2Encoder(DINO, image_size=32).fingerprint == enc.fingerprint
    )  # a config dict as first argument
    batched = Dinov2Encoder(config=DINO, image_size=32, batch_size=1)
    assert torch.allclose(batched.encode(IMAGES), pooled, atol=1e-5)
    with pytest.raises(InputError, match="got a single image; wrap it in"):
        enc.encode(IMAGES[0])


def test_dinov2_with_registers_drops_register_tokens():
    enc = Dinov2Encoder(config=DINO_REG, image_size=32)
    assert enc.prefix_tokens == 5
    patches = enc.encode_patches(IMAGES[:1])
    assert patches.shape == (1, 16, 32)
    with torch.no_grad():
        hidden = enc.model(pixel_values=enc.preprocess(IMAGES[:1])).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 16
    assert torch.allclose(patches, hidden[:, 5:])


def test_clip_vision_tiny():
    enc = ClipVisionEncoder(config=CLIP_VISION, image_size=32)
    assert enc.preprocess.normalization == "clip" and enc.preprocess.resize == 32
    pooled, patches = enc.encode_both(IMAGES)
    assert pooled.shape == (3, 16) and patches.shape == (3, 16, 32) and enc.patch_grid() == (4, 4)
    with torch.no_grad():
        out = enc.model(pixel_values=enc.preprocess(IMAGES))
    assert torch.allclose(pooled, out.image_embeds, atol=1e-6)


def test_image_specs_round_trip_and_fingerprints():
    encs = [
        Dinov2Encoder(config=DINO, image_size=32),
        Dinov2Encoder(config=DINO_REG, image_size=32),
        ClipVisionEncoder(config=CLIP_VISION, image_size=32),
    ]
    for enc in encs:
        again = build_image_encoder(json.loads(json.dumps(enc.spec())))
        assert again.fingerprint == enc.fingerprint
        assert torch.equal(again.encode(IMAGES), enc.encode(IMAGES))
    fps = {e.fingerprint for e in encs}
    fps.add(Dinov2Encoder(config=DINO, image_size=32, seed=1).fingerprint)  # other weights
    fps.add(Dinov2Encoder(config=DINO, image_size=32, resize_size=32).fingerprint)  # other preprocessing
    fps.add(Dinov2Encoder(config=DINO, image_size=32, normalization="clip").fingerprint)
    assert len(fps) == 6


def test_dinov2_from_a_saved_directory(tmp_path):
    enc = Dinov2Encoder(config=DINO, image_size=32)
    enc.model.save_pretrained(tmp_path / "dino")
    loaded = Dinov2Encoder(str(tmp_path / "dino"), image_size=32)
    assert torch.allclose(loaded.encode(IMAGES), enc.encode(IMAGES), atol=1e-6)
    assert loaded.spec()["model"] == str(tmp_path / "dino")
    assert build_image_encoder(loaded.spec()).fingerprint == loaded.fingerprint
    with pytest.raises(InputError, match="cannot load model"):
        Dinov2Encoder(str(tmp_path / "nowhere"))
    # a pickled checkpoint is refused, never torch.load-ed
    enc.model.config.save_pretrained(tmp_path / "pickled")
    torch.save(enc.model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(InputError, match="with \\*.safetensors weights"):
        Dinov2Encoder(str(tmp_path / "pickled"), image_size=32)


def _vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(path)


def test_bert_style_text_mean_and_cls(tmp_path):
    vocab = _vocab_file(tmp_path)
    mean = HFTextEncoder(config=BERT, tokenizer=vocab, pooling="mean")
    cls = HFTextEncoder(config=BERT, tokenizer=vocab, pooling="cls")
    texts = ["turn the red mug blue", "remove the dog", "add a hat to the cat on the beach"]
    a, b = mean.encode(texts), cls.encode(texts)
    assert a.shape == b.shape == (3, 32)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(a, b)
    # masked mean: padding does not change a text's embedding
    assert torch.allclose(mean.encode(texts[1:2]), a[1:2], atol=1e-5)
    assert mean.fingerprint != cls.fingerprint
    again = build_text_encoder(mean.spec())
    assert again.fingerprint == mean.fingerprint and torch.equal(again.encode(texts), a)
    # same config and seed with a different tokenizer vocabulary is a different encoder
    other = HFTextEncoder(config=BERT, tokenizer=WORDLEVEL, pooling="mean")
    assert other.fingerprint != mean.fingerprint


def test_clip_text_truncates_and_warns_once():
    enc = HFTextEncoder(config=CLIP_TEXT, tokenizer=WORDLEVEL, pooling="clip", max_length=77)
    assert enc.max_length == 8 and enc.dim == 16  # capped at the model's 8 positions
    long = "turn the red mug blue and make the sky green and add a hat to the cat"
    with pytest.warns(UserWarning) as rec:
        x = enc.encode([long, "remove the dog"])
    msgs = [str(w.message) for w in rec if "truncated" in str(w.message)]
    assert msgs == [
        "HFTextEncoder(clip_text_model): 1 of 2 texts exceed max_length=8 tokens and were truncated; "
        "features see only the first 8 tokens (warned once per encoder)"
    ]
    assert x.shape == (2, 16) and torch.isfinite(x).all()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([long])  # second time: silent
    # the projected EOS embedding equals what the model reports as text_embeds
    tok = enc.tokenizer(["remove the dog"], return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).text_embeds
    assert torch.allclose(x[1], torch.nn.functional.normalize(ref, dim=-1)[0], atol=1e-5)


def test_text_encoder_errors():
    with pytest.raises(InputError, match="give exactly one of model"):
        HFTextEncoder()
    with pytest.raises(InputError, match="pooling must be one of"):
        HFTextEncoder(config=BERT, tokenizer=WORDLEVEL, pooling="max")
    with pytest.raises(InputError, match="needs a tokenizer spec"):
        HFTextEncoder(config=BERT)
    with pytest.raises(InputError, match="model config needs 'model_type'"):
        HFTextEncoder(config={"hidden_size": 8}, tokenizer=WORDLEVEL)


_FP_SCRIPT = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
from ade_runtime.encoders import build_image_encoder, build_text_encoder
specs = json.loads(sys.argv[1])
out = [build_image_encoder(s).fingerprint for s in specs["image"]]
out += [build_text_encoder(s).fingerprint for s in specs["text"]]
print(json.dumps(out))
"""


def test_fingerprints_stable_across_fresh_processes(tmp_path):
    image = [Dinov2Encoder(config=DINO, image_size=32), ClipVisionEncoder(config=CLIP_VISION, image_size=32)]
    text = [
        HFTextEncoder(config=CLIP_TEXT, tokenizer=WORDLEVEL, pooling="clip"),
        HFTextEncoder(config=BERT, tokenizer=_vocab_file(tmp_path)),
    ]
    specs = json.dumps({"image": [e.spec() for e in image], "text": [e.spec() for e in text]})
    runs = [
        subprocess.run(
            [sys.executable, "-c", _FP_SCRIPT, specs],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (0, 1)
    ]
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == [e.fingerprint for e in image + text]


def test_artifact_rebuilds_hf_encoders_and_refuses_others(tmp_path):
    text = HFTextEncoder(config=BERT, tokenizer=WORDLEVEL)
    image = Dinov2Encoder(config=DINO, image_size=32)
    save_artifact(
        tmp_path,
        CRITIQUE_NAME,
        kind="critique",
        class_name="CritiquePredictor",
        config={"patch_dim": image.patch_dim},
        tensors={"w": torch.zeros(3)},
        feature_spec={"encoders": {"text": text, "image": image}},
    )
    art = load_artifact(tmp_path, CRITIQUE_NAME, kind="critique")
    rebuilt = encoders_from_feature_spec(art.feature_spec)
    assert (
        rebuilt["image"].fingerprint == image.fingerprint and rebuilt["text"].fingerprint == text.fingerprint
    )
    load_artifact(
        tmp_path, CRITIQUE_NAME, encoder_fingerprints={k: v.fingerprint for k, v in rebuilt.items()}
    )
    other = Dinov2Encoder(config=DINO, image_size=32, seed=7)
    with pytest.raises(ArtifactError) as err:
        load_artifact(tmp_path, CRITIQUE_NAME, encoder_fingerprints={"image": other})
    assert str(err.value) == (
        f"{tmp_path / 'critique.json'}: encoder mismatch: the artifact was trained with image encoder "
        f"{image.fingerprint}, you passed {other.fingerprint}; use the encoder from the artifact's feature_spec "
        "or retrain"
    )


def test_real_minilm_offline():
    path = minilm_path()
    assert (path / "model.safetensors").is_file()
    enc = build_text_encoder({"kind": "hf", "model": "minilm"})
    assert enc.dim == 384 and enc.spec() == {
        "kind": "hf",
        "model": "minilm",
        "pooling": "mean",
        "max_length": 256,
        "normalize": True,
    }
    x = enc.encode(
        [
            "Turn the red mug blue",
            "Make the red cup blue",
            "Remove the dog from the beach",
            "Add fireworks to the night sky",
        ]
    )
    sim = (x @ x.T).numpy()
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4 and sim[0, 1] > sim[0, 3] + 0.4
    # the path and the portable name give the same encoder
    assert HFTextEncoder(str(path)).fingerprint == enc.fingerprint


def test_full_clip_config_feeds_both_towers():
    tower = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    text_cfg = {**tower, "vocab_size": 32, "max_position_embeddings": 8, "bos_token_id": 2, "eos_token_id": 3}
    clip = {
        "model_type": "clip",
        "projection_dim": 16,
        "text_config": text_cfg,
        "vision_config": {**tower, "image_size": 32, "patch_size": 8},
    }
    image = ClipVisionEncoder(clip, image_size=32)
    text = HFTextEncoder(config=clip, pooling="clip", tokenizer=WORDLEVEL)
    assert image.encode(IMAGES[:1]).shape == (1, 16) and text.encode(["red mug"]).shape == (1, 16)
    assert build_image_encoder(image.spec()).fingerprint == image.fingerprint
    assert build_text_encoder(text.spec()).fingerprint == text.fingerprint
