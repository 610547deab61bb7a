"""Spatial reasoning mask: chunked attention capture, mask construction, processor install/restore."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from ade_runtime.backbones.base import AttemptSpec, EditRequest  # noqa: E402
from ade_runtime.backbones.flux_kontext import FluxKontextBackbone  # noqa: E402
from ade_runtime.backbones.srm import (  # noqa: E402
    SRMCapture,
    SRMConfig,
    attention_to_text,
    otsu_threshold,
    token_map_to_mask,
)
from ade_runtime.errors import InputError  # noqa: E402
from ade_train.bench.tiny_flux import test_image, tiny_kontext_pipeline  # noqa: E402


def naive(q, k, idx):
    """The full attention matrix, materialised: what the chunked version must reproduce."""
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.softmax(logits, -1)[..., idx].sum(-1).mean(1)


@settings(max_examples=25, deadline=None)
@given(
    nq=st.integers(1, 40),
    nk=st.integers(2, 50),
    heads=st.integers(1, 3),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 10_000),
)
def test_chunked_equals_unchunked(nq, nk, heads, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, nq, heads, 8, generator=g)
    k = torch.randn(2, nk, heads, 8, generator=g)
    idx = torch.arange(min(5, nk))
    full = attention_to_text(q, k, idx, chunk_size=10**6)
    chunked = attention_to_text(q, k, idx, chunk_size=chunk)
    assert chunked.shape == (2, nq)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full, naive(q, k, idx), rtol=1e-5, atol=1e-6)
    assert float(full.min()) >= 0 and float(full.max()) <= 1 + 1e-6


def test_config_checks():
    SRMConfig(threshold=0.8, smoothing=0.0, chunk_size=1)
    for bad in (
        {"blocks": ()},
        {"steps": ()},
        {"steps": (-1,)},
        {"threshold": "mean"},
        {"threshold": 1.0},
        {"smoothing": -1.0},
        {"smoothing": float("nan")},
        {"chunk_size": 0},
    ):
        field = next(iter(bad))
        with pytest.raises(InputError, match=f"SRMConfig.{field}"):
            SRMConfig(**bad)


def test_otsu_splits_bimodal_sample():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.8, 0.03, 200)])
    t = otsu_threshold(v)
    assert 0.3 < t < 0.7
    assert ((v >= t) == (np.arange(700) >= 500)).all()


@pytest.mark.parametrize("threshold", ["otsu", 0.75])
def test_token_map_to_mask_size_and_location(threshold):
    grid = (4, 6)
    scores = np.zeros(grid, np.float32)
    scores[1:3, 3:5] = 1.0  # the instruction's region, in token units
    mask, soft = token_map_to_mask(
        scores.ravel(), grid, (60, 40), SRMConfig(threshold=threshold, smoothing=0.5)
    )
    assert mask.shape == soft.shape == (40, 60) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask[20, 40] == 1.0 and mask[5, 5] == 0.0  # centre of the hot tokens vs a far corner
    if threshold == 0.75:
        assert abs(mask.mean() - 0.25) < 0.05


@pytest.fixture(scope="module")
def pipe():
    return tiny_kontext_pipeline(num_layers=2, num_single_layers=1)


def test_capture_installs_on_chosen_blocks_and_restores(pipe):
    before = dict(pipe.transformer.attn_processors)
    cap = SRMCapture(
        pipe.transformer, SRMConfig(blocks=("transformer_blocks.1",)), text_tokens=4, query_tokens=16
    )
    with cap:
        during = pipe.transformer.attn_processors
        changed = [n for n in before if during[n] is not before[n]]
        assert changed == ["transformer_blocks.1.attn.processor"]
    after = pipe.transformer.attn_processors
    assert all(after[n] is before[n] for n in before)
    with pytest.raises(InputError, match="match no attention module"):
        with SRMCapture(pipe.transformer, SRMConfig(blocks=("nope",)), text_tokens=4, query_tokens=16):
            pass


def test_adapter_returns_mask_and_output_is_unchanged(pipe):
    img = test_image(24, 16)
    cfg = SRMConfig(blocks=("transformer_blocks", "single_transformer_blocks"), steps=(0, 1), chunk_size=5)
    kw = {"num_inference_steps": 3, "resolution": "input", "max_sequence_length": 32}
    plain = FluxKontextBackbone(pipe, **kw)
    srm = FluxKontextBackbone(pipe, srm=cfg, **kw)
    spec = AttemptSpec(0, 0, 0, "make the sky red", seed=3)
    ref = plain.run(plain.prepare(EditRequest(img, spec.prompt)), spec)
    out = srm.run(srm.prepare(EditRequest(img, spec.prompt)), spec)
    assert ref.attention_mask is None
    assert out.attention_mask.shape == (16, 24)
    assert 0 < out.attention_mask.mean() < 1
    assert out.extra["srm_maps"] == 3 * 2  # 3 attention blocks x 2 captured steps
    assert np.array_equal(np.asarray(out.image), np.asarray(ref.image))  # capture never alters the sample

    # Chunked capture inside the pipeline equals a single-chunk capture.
    big = FluxKontextBackbone(pipe, srm=SRMConfig(blocks=cfg.blocks, steps=cfg.steps, chunk_size=10**6), **kw)
    out_big = big.run(big.prepare(EditRequest(img, spec.prompt)), spec)
    assert np.array_equal(out_big.attention_mask, out.attention_mask)
