"""Artifact loading refuses every kind of damage with an ArtifactError naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile

import pytest
import torch

import ade_runtime
from ade_runtime.artifacts import CARD_NAME, load_artifact, save_artifact
from ade_runtime.errors import ArtifactError

FEATURES = {"encoders": {"text": {"fingerprint": "hashing-aaaa", "spec": {"kind": "hashing", "dim": 8}}}}


@pytest.fixture
def export(tmp_path):
    save_artifact(
        tmp_path,
        CARD_NAME,
        kind="card",
        class_name="CardPredictor",
        config={"hidden": 4},
        tensors={"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.zeros(8)},
        feature_spec=FEATURES,
    )
    return tmp_path


def _paths(d):
    return d / "card.json", d / "card.safetensors"


def _load_error(d, **kw) -> str:
    with pytest.raises(ArtifactError) as err:
        load_artifact(d, CARD_NAME, **kw)
    return str(err.value)


def _edit_json(d, fn):
    jp, _ = _paths(d)
    meta = json.loads(jp.read_text())
    fn(meta)
    jp.write_text(json.dumps(meta))


def _sha_message(st, header_sha, extra):
    got = hashlib.sha256(st.read_bytes()).hexdigest()
    return f"{st}: sha256 mismatch (file {got[:16]}..., header {header_sha[:16]}...){extra}"


def test_truncated_safetensors(export):
    jp, st = _paths(export)
    header_sha = json.loads(jp.read_text())["weights_sha256"]
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 100])
    assert _load_error(export) == _sha_message(
        st, header_sha, ": the weights are truncated, corrupted or were replaced after export; re-export"
    )


def test_truncated_safetensors_with_recomputed_sha_is_a_safetensors_error(export):
    jp, st = _paths(export)
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 100])
    _edit_json(export, lambda m: m.update(weights_sha256=hashlib.sha256(st.read_bytes()).hexdigest()))
    msg = _load_error(export)
    assert msg.startswith(f"{st}: safetensors error: ") and msg.endswith("; re-export")


def test_bit_flip_in_weights(export):
    jp, st = _paths(export)
    header_sha = json.loads(jp.read_text())["weights_sha256"]
    data = bytearray(st.read_bytes())
    data[-3] ^= 0x10
    st.write_bytes(bytes(data))
    assert _load_error(export) == _sha_message(
        st, header_sha, ": the weights are truncated, corrupted or were replaced after export; re-export"
    )


def test_bit_flip_in_header_length(export):
    jp, st = _paths(export)
    header_sha = json.loads(jp.read_text())["weights_sha256"]
    data = bytearray(st.read_bytes())
    data[5] ^= 0x01
    st.write_bytes(bytes(data))
    assert _load_error(export) == _sha_message(
        st, header_sha, " and not a valid safetensors file: truncated or corrupted; re-export"
    )


def test_header_not_json(export):
    jp, _ = _paths(export)
    jp.write_text('{"format": "ade-artifact", ')
    msg = _load_error(export)
    assert msg.startswith(f"{jp}: header not JSON (") and msg.endswith("); re-export the artifact")
    jp.write_text("[1, 2]")
    assert _load_error(export) == f"{jp}: header not JSON object (got list); re-export"


def test_wrong_version(export):
    jp, _ = _paths(export)
    _edit_json(export, lambda m: m.update(format_version=2))
    assert _load_error(export) == (
        f"{jp}: wrong version: format_version 2, this ade_runtime {ade_runtime.__version__} reads up to 1; "
        "upgrade ade-adaptive or re-export with this version"
    )


def test_wrong_kind(export):
    jp, _ = _paths(export)
    assert _load_error(export, kind="critique") == (
        f"{jp}: wrong kind: the file holds a 'card' artifact, expected 'critique'; "
        "check the name passed to load_artifact"
    )


def test_missing_key(export):
    jp, _ = _paths(export)
    assert _load_error(export, required_config_keys=["hidden", "levels"]) == (
        f"{jp}: missing key 'config.levels'; the artifact was exported by an older or different trainer, "
        "re-export it"
    )
    _edit_json(export, lambda m: m.pop("tensors"))
    assert _load_error(export) == f"{jp}: missing key 'tensors'; re-export the artifact with save_artifact"


def test_shape_mismatch(export):
    _, st = _paths(export)
    _edit_json(export, lambda m: m["tensors"]["w"].update(shape=[4, 16]))
    assert _load_error(export) == (
        f"{st}: shape mismatch: tensor 'w' is [8, 8] in the safetensors file but [4, 16] in the JSON header; "
        "re-export"
    )


def test_weights_from_another_export(export, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    save_artifact(other, CARD_NAME, kind="card", class_name="C", config={}, tensors={"w": torch.ones(8, 8)})
    jp, st = _paths(export)
    header_sha = json.loads(jp.read_text())["weights_sha256"]
    st.write_bytes((other / "card.safetensors").read_bytes())
    assert _load_error(export) == _sha_message(
        st, header_sha, ": the weights are truncated, corrupted or were replaced after export; re-export"
    )


def test_encoder_mismatch(export):
    jp, _ = _paths(export)
    assert load_artifact(export, CARD_NAME, encoder_fingerprints={"text": "hashing-aaaa"}).config == {
        "hidden": 4
    }
    assert _load_error(export, encoder_fingerprints={"text": "hf-bbbb"}) == (
        f"{jp}: encoder mismatch: the artifact was trained with text encoder hashing-aaaa, you passed hf-bbbb; "
        "use the encoder from the artifact's feature_spec or retrain"
    )
    assert _load_error(export, encoder_fingerprints={"image": "pixels-cccc"}) == (
        f"{jp}: encoder mismatch: the artifact records no 'image' encoder (it has ['text']), you passed pixels-cccc"
    )


@pytest.mark.parametrize("which", ["json", "safetensors"])
def test_missing_file(export, which):
    jp, st = _paths(export)
    (jp if which == "json" else st).unlink()
    if which == "json":
        assert _load_error(export) == (
            f"{jp}: missing file; an artifact is NAME.json + NAME.safetensors written by save_artifact "
            "(check the export directory and the name)"
        )
    else:
        assert _load_error(export) == (
            f"{st}: missing file; the JSON header has no weights beside it, re-export"
        )


class _Payload:
    """Unpickling this creates a file: proof of whether a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_renamed_to_safetensors_is_refused_unexecuted(export, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    # the payload is live: unpickling it really does create the probe file
    pickle.loads(pickle.dumps(_Payload(scratch / "probe"))).close()
    assert (scratch / "probe").exists()

    _, st = _paths(export)
    marker = scratch / "executed"
    for protocol in (2, 4, 5):
        st.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=protocol))
        assert _load_error(export) == (
            f"{st}: not a safetensors file (it looks like a pickle / torch.save archive); "
            "ade never unpickles, export weights with save_artifact"
        )
        assert not marker.exists()
    # torch.save's zip container (pickle inside) is refused the same way
    torch.save({"w": torch.ones(2)}, st)
    assert zipfile.is_zipfile(st)
    assert "ade never unpickles" in _load_error(export)


def test_unknown_top_level_key_warns_but_loads(export):
    jp, _ = _paths(export)
    _edit_json(export, lambda m: m.update(added_in_v1_5={"x": 1}))
    with pytest.warns(UserWarning) as rec:
        art = load_artifact(export, CARD_NAME)
    assert str(rec[0].message) == (
        f"{jp}: unknown top-level keys ['added_in_v1_5'] (written by a newer ade?); ignoring them"
    )
    assert torch.equal(art.tensors["w"], torch.arange(64, dtype=torch.float32).reshape(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _edit_json(export, lambda m: m.pop("added_in_v1_5"))
        load_artifact(export, CARD_NAME)
