"""Critique training: a tiny end-to-end run on the testbed fixture, export, reload, CLI errors.

The run trains a tiny scratch DINOv2 (built from a config in code) with the head for a few epochs
without a logger; metrics must beat chance (AUROC 0.5, pointing = the share of flaw patches).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURES
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ade_runtime.artifacts import save_artifact
from ade_runtime.predictors.critique import CritiquePredictor
from ade_runtime.traces import load_records
from ade_train.critique import auroc, build_config, cli_main, train
from ade_train.critique.data import CritiqueDataModule
from ade_train.critique.examples import collect_examples, flaw_cover, patch_targets

FIXTURE = FIXTURES / "testbed_small"
TINY_DINO = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, patch_size=8
)
SMALL = [
    "--data.text_encoder={kind: hashing, dim: 128}",
    "--data.max_train_attempts=1000",  # all 24 training requests: attempts are each their own image now
    "--data.max_eval_attempts=300",
    "--data.split_fractions=[0.6, 0.1, 0.0, 0.3]",  # 12 test requests: AUROC on 4 would be noise
    "--model.head.hidden=48",
    "--trainer.enable_progress_bar=false",
]


def _frozen_dino(path: Path) -> Path:
    """A tiny DINOv2 saved like a real checkpoint, loaded by path (the real loading code)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=64, **TINY_DINO)).save_pretrained(path)
    return path


def _args(out: Path, dino: Path, *extra: str) -> list[str]:
    # MagicBrush preprocessing (resize 73, centre-crop 64): judge boxes are mapped into the crop window
    return ["--data", str(FIXTURE), "--out", str(out), "--no-wandb", "--encoder", str(dino), "--image-size", "64",
            *SMALL, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("critique_run")
    dino = _frozen_dino(tmp_path_factory.mktemp("dino") / "dinov2-tiny")
    cfg = build_config(_args(out, dino, "--max-epochs", "4"))
    metrics = train(cfg)
    return {"out": out, "metrics": metrics, "cfg": cfg, "dino": dino}


def test_tiny_training_beats_chance(trained):
    m = trained["metrics"]
    data = trained["cfg"]["data"]
    dm = CritiqueDataModule(
        str(FIXTURE),
        image_encoder=data["image_encoder"],
        split_fractions=data["split_fractions"],
        max_train_attempts=data["max_train_attempts"],
        max_eval_attempts=data["max_eval_attempts"],
    )
    dm.setup()
    # pointing on held-out requests against the chance level computed here: a random patch
    test = [ex for ex in dm.examples["test"] if not ex.passed and ex.flaws]
    chance = float(np.mean([flaw_cover(ex.flaws, dm.grid).float().mean() for ex in test]))
    assert m["test/pointing"] > chance
    assert m["test/pointing"] > m["test/pointing_chance"]  # the trainer's chance (kinds seen in training)
    assert 0.0 <= m["test/iou"] <= 1.0 and 0.0 <= m["test/auroc"] <= 1.0
    # p_pass of the exported predictor separates passing from failing training attempts
    pred = CritiquePredictor.from_pretrained(trained["out"] / "export")
    train_ex = dm.examples["train"][:200]
    crits = pred.predict_batch(
        [Image.open(ex.source) for ex in train_ex],
        [Image.open(ex.attempt) for ex in train_ex],
        [ex.instruction for ex in train_ex],
    )
    labels = np.array([ex.passed for ex in train_ex])
    assert labels.any() and not labels.all()
    assert auroc(np.array([c.p_pass for c in crits]), labels) > 0.5


def test_head_and_trees_baseline_reported_side_by_side(trained):
    m = trained["metrics"]
    pairs = [("within_auroc", "trees_within_auroc"), ("ece", "trees_ece"), ("brier", "trees_brier"),
             ("image_only_within_auroc", "trees_image_only_within_auroc"), ("auroc", "trees_auroc")]  # fmt: skip
    for head, trees in pairs:
        assert 0.0 <= m[f"test/{head}"] <= 1.0 and 0.0 <= m[f"test/{trees}"] <= 1.0, (head, trees)
    assert m["test/within_requests"] >= 1
    result = json.loads((trained["out"] / "critique" / "result.json").read_text())
    assert result["metrics"]["test/trees_within_auroc"] == m["test/trees_within_auroc"]
    card = (trained["out"] / "export" / "README.md").read_text()
    assert "test/within_auroc" in card and "test/trees_within_auroc" in card
    config = json.loads((trained["out"] / "export" / "critique.json").read_text())["config"]
    assert config["score_inputs"] == ["clip_i", "clip_t"] and config["pixel_diff"] is True
    assert all(s > 0 for s in config["score_std"]) and config["refine_threshold"] == 0.0


def test_export_loads_and_critiques(trained):
    export = trained["out"] / "export"
    names = sorted(p.name for p in export.iterdir())
    assert names == ["README.md", "critique.json", "critique.safetensors", "export.json"]
    meta = json.loads((export / "critique.json").read_text())
    assert meta["feature_spec"]["encoders"]["image"]["spec"]["model"] == str(trained["dino"])
    assert not any(k.startswith("image_encoder.") for k in meta["tensors"])
    size = (export / "critique.safetensors").stat().st_size
    assert size < 10 << 20
    pred = CritiquePredictor.from_pretrained(export)
    assert not pred.config.encoder_trained and pred.config.kinds  # frozen: referenced by path
    records, _ = load_records(FIXTURE, images="none")
    rec = next(r for r in records if any(a.image and a.judge and not a.judge.passed for a in r.attempts))
    att = next(a for a in rec.attempts if a.image and a.judge and not a.judge.passed)
    c = pred.predict(
        Image.open(rec.resolve(rec.source_image)), Image.open(rec.resolve(att.image)), rec.instruction
    )
    assert c.mask.shape == (64, 64) and 0.0 <= c.p_pass <= 1.0
    manifest = json.loads((export / "export.json").read_text())
    assert manifest["predictors"]["critique"]["data"]["source"] == "testbed"
    assert "test/auroc" in manifest["predictors"]["critique"]["metrics"]


def test_rerun_reexports_and_keeps_other_predictors(trained, tmp_path):
    out = trained["out"]
    # another predictor already in the export (as after `ade-train card`) must survive
    save_artifact(
        out / "export", "card", kind="card", class_name="X", config={}, tensors={"w": torch.ones(2)}
    )
    before = (out / "critique" / "result.json").read_text()
    metrics = train(build_config(_args(out, trained["dino"])))  # finished run: re-export without retraining
    assert metrics == trained["metrics"]
    assert (out / "critique" / "result.json").read_text() == before
    names = {p.name for p in (out / "export").iterdir()}
    assert {"card.json", "card.safetensors", "critique.json", "critique.safetensors"} <= names


def test_examples_targets_and_skips():
    records, _ = load_records(FIXTURE, images="none")
    found = collect_examples(records)
    assert len(found.examples) == sum(1 for r in records for a in r.attempts if a.image and a.judge)
    ex = next(e for e in found.examples if e.flaws)
    kinds = tuple(sorted({f.kind for f in ex.flaws}))
    target = patch_targets(ex.flaws, kinds, (8, 8))
    assert target.shape == (64,) and target.max() >= 1
    assert torch.equal(target > 0, flaw_cover(ex.flaws, (8, 8)))
    # attempts without an image or judge are skipped and counted, not lost
    rec = records[0]
    rec.attempts[0].image = None
    rec.attempts[1].judge = None
    counted = collect_examples([rec])
    assert counted.skipped == {"no_image": 1, "no_judge": 1}
    assert len(counted.examples) == sum(1 for a in rec.attempts if a.image and a.judge)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert cli_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli_main(["--data", str(FIXTURE), "--out", str(tmp_path / "o"), "--model.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert cli_main(["--data", str(FIXTURE), "--out", str(tmp_path / "o"), "--resume", "--no-wandb"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert (
        cli_main(["--data", str(FIXTURE), "--out", str(tmp_path / "o"), "--encoder", "x", "--print-config"])
        == 0
    )
    assert "model: x" in capsys.readouterr().out


@pytest.mark.slow
def test_scratch_tiny_trains_end_to_end_and_ships_its_encoder(tmp_path):
    args = ["--data", str(FIXTURE), "--out", str(tmp_path), "--no-wandb", "--encoder", "scratch_tiny",
            "--max-epochs", "1", "--data.max_train_attempts=120", "--data.max_eval_attempts=60",
            "--data.image_encoder={kind: dinov2, image_size: 64, resize_size: 64, seed: 0, config: {model_type: dinov2, "
            "hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, patch_size: 8}}",
            *SMALL[:1], *SMALL[4:]]  # fmt: skip
    metrics = train(build_config(args))
    assert np.isfinite(metrics["test/loss"])
    meta = json.loads((tmp_path / "export" / "critique.json").read_text())
    assert meta["config"]["encoder_trained"] and meta["config"]["grid"] == [8, 8]
    assert any(k.startswith("image_encoder.") for k in meta["tensors"])
    pred = CritiquePredictor.from_pretrained(tmp_path / "export")
    records, _ = load_records(FIXTURE, images="none")
    rec = next(r for r in records if any(a.image for a in r.attempts))
    img = Image.open(rec.resolve(next(a.image for a in rec.attempts if a.image)))
    assert pred.predict(Image.open(rec.resolve(rec.source_image)), img, rec.instruction).mask.shape == (
        64,
        64,
    )
