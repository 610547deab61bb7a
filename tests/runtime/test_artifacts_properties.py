"""Property tests: any JSON config and any set of tensors round-trips; any single-byte corruption of the
weights is caught; hashing features are unit-norm or zero for any text."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ade_runtime.artifacts import load_artifact, save_artifact
from ade_runtime.encoders import HashingTextEncoder
from ade_runtime.errors import ArtifactError

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def tensor_dicts(draw):
    names = draw(
        st.lists(
            st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"), max_size=4, unique=True
        )
    )
    out = {}
    for i, name in enumerate(names):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        g = torch.Generator().manual_seed(i)
        t = torch.randn(shape, generator=g) * 10
        out[name] = t.to(dtype)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.dictionaries(st.text(max_size=10), json_values, max_size=5), tensors=tensor_dicts())
def test_any_config_and_tensors_round_trip(config, tensors):
    with tempfile.TemporaryDirectory() as d:
        save_artifact(d, "card", kind="card", class_name="C", config=config, tensors=tensors)
        art = load_artifact(d, "card", kind="card")
        assert art.config == config
        assert set(art.tensors) == set(tensors)
        for k, t in tensors.items():
            assert art.tensors[k].dtype == t.dtype and torch.equal(art.tensors[k], t)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_byte_corruption_of_weights_is_an_artifact_error(data):
    with tempfile.TemporaryDirectory() as d:
        save_artifact(
            d, "critique", kind="critique", class_name="C", config={}, tensors={"w": torch.ones(4, 4)}
        )
        path = Path(d) / "critique.safetensors"
        blob = bytearray(path.read_bytes())
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(blob))
        try:
            load_artifact(d, "critique")
        except ArtifactError as err:
            assert str(err).startswith(str(path))
        else:
            raise AssertionError(f"corruption at byte {pos} was not detected")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_hashing_rows_are_unit_norm_or_zero(text):
    x = HashingTextEncoder(dim=64).encode([text])
    norm = float(x.norm())
    assert torch.isfinite(x).all() and (abs(norm - 1.0) < 1e-5 or norm == 0.0)
