"""FeatureCache: hits skip compute, namespaces per fingerprint, corruption recovery, two writers at once."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ade_runtime.encoders import FeatureCache, HashingTextEncoder, PixelStatsEncoder, content_key
from ade_runtime.errors import InputError

TEXTS = [f"turn object {i} into colour {i % 7}" for i in range(40)]


class Counting:
    """Wraps an encoder's encode and records every batch it is asked to compute."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, items):
        self.batches.append(list(items))
        return self.fn(items)

    @property
    def n_items(self):
        return sum(len(b) for b in self.batches)


def _keys(items):
    return [content_key(t) for t in items]


def test_hits_do_not_call_compute(tmp_path):
    enc = HashingTextEncoder(dim=32)
    cache = FeatureCache(tmp_path)
    compute = Counting(enc.encode)
    x = cache.get(enc, TEXTS[:20], _keys(TEXTS[:20]), compute, batch_size=8)
    assert torch.equal(x, enc.encode(TEXTS[:20]))
    assert [len(b) for b in compute.batches] == [8, 8, 4]

    compute2 = Counting(enc.encode)
    y = cache.get(enc, TEXTS[:20], _keys(TEXTS[:20]), compute2)
    assert compute2.batches == [] and torch.equal(x, y)

    # partial hit: only the 10 new texts are computed; order of the result follows the keys
    mixed = TEXTS[15:30][::-1]
    compute3 = Counting(enc.encode)
    z = cache.get(enc, mixed, _keys(mixed), compute3)
    assert compute3.n_items == 10 and sorted(compute3.batches[0]) == sorted(TEXTS[20:30])
    assert torch.equal(z, enc.encode(mixed))

    # a fresh cache object (another run) reads everything from disk
    compute4 = Counting(enc.encode)
    w = FeatureCache(tmp_path).get(enc, TEXTS[:30], _keys(TEXTS[:30]), compute4)
    assert compute4.batches == [] and torch.equal(w, enc.encode(TEXTS[:30]))


def test_duplicates_computed_once_and_default_compute(tmp_path):
    enc = HashingTextEncoder(dim=16)
    items = ["a red mug", "a red mug", "a blue mug", "a red mug"]
    compute = Counting(enc.encode)
    x = FeatureCache(tmp_path).get(enc, items, _keys(items), compute)
    assert compute.n_items == 2 and torch.equal(x[0], x[3]) and x.shape == (4, 16)
    assert torch.equal(
        FeatureCache(tmp_path).get(enc, items, _keys(items)), x
    )  # compute_fn defaults to encode


def test_layout_namespaces_by_fingerprint_and_variant(tmp_path):
    cache = FeatureCache(tmp_path)
    small, big = HashingTextEncoder(dim=16), HashingTextEncoder(dim=64)
    assert cache.get(small, TEXTS[:3], _keys(TEXTS[:3])).shape == (3, 16)
    assert cache.get(big, TEXTS[:3], _keys(TEXTS[:3])).shape == (3, 64)  # same keys, no collision
    pix = PixelStatsEncoder(size=32, grid=2, patches=4)
    imgs = [Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i in range(3)]
    pooled = cache.get(pix, imgs, _keys(imgs))
    patches = cache.get(pix, imgs, _keys(imgs), pix.encode_patches, variant="patches")
    assert pooled.shape == (3, pix.dim) and patches.shape == (3, 16, pix.patch_dim)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [small.fingerprint, big.fingerprint, pix.fingerprint, f"{pix.fingerprint}.patches"]
    )
    for sub in tmp_path.iterdir():
        names = os.listdir(sub)
        assert names and all(n.startswith("shard-") and n.endswith(".safetensors") for n in names)


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "garbage"])
def test_corrupt_shard_is_ignored_with_warning_and_recomputed(tmp_path, damage):
    enc = HashingTextEncoder(dim=32)
    FeatureCache(tmp_path).get(enc, TEXTS[:10], _keys(TEXTS[:10]), batch_size=5)
    sub = tmp_path / enc.fingerprint
    shard = sorted(sub.iterdir())[0]
    data = bytearray(shard.read_bytes())
    if damage == "bitflip":
        data[-5] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\x80\x04not a safetensors file")
    shard.write_bytes(bytes(data))

    compute = Counting(enc.encode)
    with pytest.warns(
        UserWarning, match="FeatureCache: ignoring corrupt shard .*; its features will be recomputed"
    ):
        x = FeatureCache(tmp_path).get(enc, TEXTS[:10], _keys(TEXTS[:10]), compute)
    assert compute.n_items == 5  # exactly the damaged shard's items
    assert torch.equal(x, enc.encode(TEXTS[:10]))
    names = sorted(os.listdir(sub))
    assert (
        sum(n.startswith("corrupt-") for n in names) == 1 and sum(n.startswith("shard-") for n in names) == 2
    )
    compute2 = Counting(enc.encode)
    FeatureCache(tmp_path).get(enc, TEXTS[:10], _keys(TEXTS[:10]), compute2)
    assert compute2.batches == []


def test_bad_inputs(tmp_path):
    enc = HashingTextEncoder(dim=8)
    cache = FeatureCache(tmp_path)
    with pytest.raises(InputError, match="3 items but 2 keys"):
        cache.get(enc, ["a", "b", "c"], ["k1", "k2"])
    with pytest.raises(InputError, match="compute_fn returned \\(1, 8\\) for a batch of 2"):
        cache.get(enc, ["a", "b"], _keys(["a", "b"]), lambda items: enc.encode(items[:1]))
    with pytest.raises(InputError, match="not a safe directory name"):
        cache.get("../escape", ["a"], _keys(["a"]), enc.encode)
    assert cache.get(enc, [], []).shape == (0,)


def test_content_key():
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    keys = {
        content_key("abc"),
        content_key(b"abc"),
        content_key(img),
        content_key(np.asarray(img)),
        content_key(Image.new("RGB", (4, 4), (1, 2, 4))),
    }
    assert len(keys) == 5 and all(len(k) == 64 for k in keys)
    assert content_key("abc") == content_key("abc") and content_key(img.copy()) == content_key(img)
    with pytest.raises(InputError, match="content_key takes bytes, str"):
        content_key(3)


def _fill(directory, texts, barrier, queue):
    enc = HashingTextEncoder(dim=32)
    barrier.wait()  # start writing at the same moment
    x = FeatureCache(directory).get(enc, texts, [content_key(t) for t in texts], batch_size=4)
    queue.put(x.numpy().tobytes())


def test_two_processes_fill_the_same_cache(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    texts = [f"instruction number {i}" for i in range(120)]
    halves = [texts[:80], texts[40:]]  # 40 keys in common
    procs = [ctx.Process(target=_fill, args=(str(tmp_path), h, barrier, queue)) for h in halves]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(results) == 2
    enc = HashingTextEncoder(dim=32)
    compute = Counting(enc.encode)
    with_all = FeatureCache(tmp_path).get(enc, texts, _keys(texts), compute)
    assert compute.batches == []  # the two writers together covered everything
    assert torch.equal(with_all, enc.encode(texts))
    names = os.listdir(tmp_path / enc.fingerprint)
    assert all(n.startswith("shard-") and n.endswith(".safetensors") for n in names)  # no temp files left
    assert len(names) == 40  # 20 batches of 4 per process, unique names
