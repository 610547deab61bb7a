"""Artifact format v1: round trips of every named artifact, atomic export, fingerprints."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch

import ade_runtime
from ade_runtime.artifacts import (
    ARTIFACT_FORMAT_VERSION,
    CALIBRATION_NAME,
    CARD_NAME,
    CRITIQUE_NAME,
    atomic_export_dir,
    fingerprint_files,
    fingerprint_records,
    load_artifact,
    save_artifact,
)
from ade_runtime.errors import ArtifactError


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4, generator=g)
    return {
        "head.weight": w,
        "head.bias": torch.randn(6, generator=g).double(),
        "levels": torch.tensor([1, 2, 4, 8], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(3, 2, generator=g).to(torch.bfloat16),
        "view": w.t(),  # non-contiguous view sharing storage with head.weight
    }


@pytest.mark.parametrize(
    "name,kind",
    [(CARD_NAME, "card"), (CRITIQUE_NAME, "critique"), (CALIBRATION_NAME, "calibration")],
)
def test_round_trip_every_named_artifact(tmp_path, name, kind):
    tensors = _tensors(seed=len(name))
    config = {"hidden": 32, "levels": (1, 2, 4, 8), "tau": np.float32(0.75), "name": kind}
    feature_spec = {"encoders": {"text": {"fingerprint": "hashing-v1-abc", "spec": {"kind": "hashing"}}}}
    path = save_artifact(
        tmp_path,
        name,
        kind=kind,
        class_name=f"{kind.title()}Predictor",
        config=config,
        tensors=tensors,
        feature_spec=feature_spec,
        data_fingerprint=fingerprint_records(["r2", "r1"]),
        metrics={"val_loss": 0.25, "n": 10},
    )
    assert path == tmp_path / f"{name}.json"
    assert sorted(os.listdir(tmp_path)) == sorted([f"{name}.json", f"{name}.safetensors"])

    art = load_artifact(tmp_path, name, kind=kind, required_config_keys=["hidden", "levels"])
    assert set(art.tensors) == set(tensors)
    for key, t in tensors.items():
        assert art.tensors[key].dtype == t.dtype, key
        assert torch.equal(art.tensors[key], t), key
    assert art.config == {"hidden": 32, "levels": [1, 2, 4, 8], "tau": 0.75, "name": kind}
    assert art.feature_spec == feature_spec
    assert art.encoder_fingerprints == {"text": "hashing-v1-abc"}
    assert art.kind == kind
    assert art.path == path
    meta = art.meta
    assert meta["class"] == f"{kind.title()}Predictor"
    assert meta["package_version"] == ade_runtime.__version__
    assert meta["format_version"] == ARTIFACT_FORMAT_VERSION
    assert meta["data_fingerprint"] == fingerprint_records(["r1", "r2"])
    assert meta["metrics"] == {"val_loss": 0.25, "n": 10}
    assert meta["tensors"]["head.weight"] == {"dtype": "float32", "shape": [6, 4]}
    # JSON on disk has sorted keys (diff-friendly, byte-stable re-exports)
    raw = json.loads(path.read_text())
    assert list(raw) == sorted(raw)


def test_safetensors_metadata_and_byte_stable_reexport(tmp_path):
    from safetensors import safe_open

    kw = dict(kind="card", class_name="CardPredictor", config={"a": 1}, tensors=_tensors(0))
    save_artifact(tmp_path / "a", CARD_NAME, **kw)
    save_artifact(tmp_path / "b", CARD_NAME, **kw)
    with safe_open(tmp_path / "a" / "card.safetensors", framework="pt") as fh:
        assert fh.metadata() == {"format": "ade-artifact", "format_version": "1", "kind": "card"}
    for suffix in (".json", ".safetensors"):
        a = (tmp_path / "a" / f"card{suffix}").read_bytes()
        b = (tmp_path / "b" / f"card{suffix}").read_bytes()
        assert a == b, suffix


def test_empty_tensors_and_overwrite(tmp_path):
    save_artifact(tmp_path, CALIBRATION_NAME, kind="calibration", class_name="C", config={"v": 1}, tensors={})
    save_artifact(tmp_path, CALIBRATION_NAME, kind="calibration", class_name="C", config={"v": 2}, tensors={})
    art = load_artifact(tmp_path, CALIBRATION_NAME)
    assert art.tensors == {} and art.config == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["calibration.json", "calibration.safetensors"]


def test_save_refuses_non_json_config_naming_the_field(tmp_path):
    with pytest.raises(ArtifactError) as err:
        save_artifact(
            tmp_path, CARD_NAME, kind="card", class_name="C", config={"opt": {"lr": float("nan")}}, tensors={}
        )
    assert str(err.value) == (
        f"{tmp_path / 'card.json'}: config.opt.lr is nan; store finite numbers (or null) in artifacts"
    )
    with pytest.raises(ArtifactError) as err:
        save_artifact(tmp_path, CARD_NAME, kind="card", class_name="C", config={"f": object()}, tensors={})
    assert str(err.value) == (
        f"{tmp_path / 'card.json'}: config.f has type object, which is not JSON; store tensors in `tensors`"
    )
    with pytest.raises(ArtifactError) as err:
        save_artifact(
            tmp_path,
            CARD_NAME,
            kind="card",
            class_name="C",
            config={},
            tensors={"__metadata__": torch.ones(1)},
        )
    assert str(err.value) == (
        f"{tmp_path / 'card.safetensors'}: tensor names must be non-empty strings other than '__metadata__', "
        "got '__metadata__'"
    )
    with pytest.raises(ArtifactError) as err:
        save_artifact(tmp_path, "../card", kind="card", class_name="C", config={}, tensors={})
    assert str(err.value) == "artifact name '../card' is invalid; use letters, digits, '_', '-', '.'"
    assert os.listdir(tmp_path) == []


def test_atomic_export_success_replaces_old(tmp_path):
    out = tmp_path / "export"
    with atomic_export_dir(out) as tmp:
        save_artifact(tmp, CARD_NAME, kind="card", class_name="C", config={"v": 1}, tensors={})
    with atomic_export_dir(out) as tmp:
        assert not (tmp / "card.json").exists()  # a fresh directory, not a copy of the old
        save_artifact(tmp, CARD_NAME, kind="card", class_name="C", config={"v": 2}, tensors={})
        (tmp / "README.txt").write_text("v2")
    assert load_artifact(out, CARD_NAME).config == {"v": 2}
    assert sorted(os.listdir(out)) == ["README.txt", "card.json", "card.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temp or backup directories left


def test_atomic_export_exception_midway_keeps_old(tmp_path):
    out = tmp_path / "export"
    with atomic_export_dir(out) as tmp:
        save_artifact(
            tmp, CARD_NAME, kind="card", class_name="C", config={"v": 1}, tensors={"w": torch.ones(2)}
        )
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    with pytest.raises(RuntimeError, match="trainer crashed"):
        with atomic_export_dir(out) as tmp:
            save_artifact(tmp, CARD_NAME, kind="card", class_name="C", config={"v": 2}, tensors={})
            raise RuntimeError("trainer crashed")
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    assert load_artifact(out, CARD_NAME).config == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_fingerprint_files_is_content_and_order_based(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("one\n")
    b.write_text("two\n")
    fp = fingerprint_files([a, b])
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert fingerprint_files([b, a]) == fp
    b.write_text("two!\n")
    assert fingerprint_files([a, b]) != fp
    with pytest.raises(ArtifactError, match="cannot fingerprint, not a file"):
        fingerprint_files([tmp_path / "missing.jsonl"])
    assert fingerprint_records(["x", "y"]) == fingerprint_records(["y", "x"])
    assert fingerprint_records(["x", "y"]) != fingerprint_records(["x", "y", "z"])


def test_readers_never_see_a_half_written_export(tmp_path):
    out = tmp_path / "export"

    def export(v):
        with atomic_export_dir(out) as tmp:
            save_artifact(
                tmp,
                CARD_NAME,
                kind="card",
                class_name="C",
                config={"v": v},
                tensors={"w": torch.full((128, 128), float(v))},
            )
            save_artifact(tmp, CRITIQUE_NAME, kind="critique", class_name="C", config={"v": v}, tensors={})

    export(0)
    stop, seen, problems = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                card = load_artifact(out, CARD_NAME)
                critique = load_artifact(out, CRITIQUE_NAME)
            except ArtifactError as err:
                if "missing file" not in str(
                    err
                ):  # the directory may be absent for an instant, never partial
                    problems.append(str(err))
                continue
            v = card.config["v"]
            if card.tensors["w"][0, 0].item() != v or critique.config["v"] < v:
                problems.append(f"mixed export: card {v}, critique {critique.config['v']}")
            seen.add(v)

    thread = threading.Thread(target=reader)
    thread.start()
    for v in range(1, 9):
        export(v)
    stop.set()
    thread.join()
    assert problems == []
    assert len(seen) >= 2 and load_artifact(out, CARD_NAME).config == {"v": 8}
    assert sorted(os.listdir(tmp_path)) == ["export"]
