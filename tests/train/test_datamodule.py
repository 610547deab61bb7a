"""TraceDataModule on a dataset the project did not generate: splits, labels, rejects, cache, loaders."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.foreign import write_foreign_traces

from ade_runtime.errors import TraceError
from ade_runtime.policy import budget
from ade_train.card.data import TraceDataModule
from ade_train.splits import SPLITS, load_splits, split_ids


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = tmp_path_factory.mktemp("acme")
    write_foreign_traces(root, n=80, seed=1, unjudged_every=5)
    # one broken line and one record with no judge at all: reported / skipped, never fatal
    shard = sorted(root.glob("*.jsonl"))[0]
    rec = json.loads(shard.read_text().splitlines()[0])
    rec["id"], rec["attempts"] = "acme-unjudged", [dict(a, judge=None) for a in rec["attempts"]]
    with open(shard, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.write('{"format": "ade-trace/1", "id": "broken", "instruction": NaN}\n')
    return root


def _dm(root, out=None, **kw):
    kw.setdefault("text_encoder", {"kind": "hashing", "dim": 64})
    kw.setdefault("image_encoder", {"kind": "pixels", "size": 16})
    dm = TraceDataModule(str(root), out_dir=str(out) if out else None, **kw)
    dm.setup("fit")
    return dm


def test_splits_are_disjoint_stratified_deterministic(foreign, tmp_path):
    dm = _dm(foreign, tmp_path / "out", seed=3)
    ids = dm.split_ids
    all_ids = [i for s in SPLITS for i in ids[s]]
    assert len(all_ids) == len(set(all_ids)) == dm.data_info().n_records == 80
    assert "acme-unjudged" not in all_ids and dm.n_unjudged == 1
    assert len(dm.rejects) == 1 and dm.data_info().n_rejected == 1
    assert 52 <= len(ids["train"]) <= 60 and all(len(ids[s]) >= 6 for s in SPLITS[1:])
    for split in ("train", "test"):  # every category appears in train and test
        cats = {r.category for r in dm.records(split)}
        assert cats == {"warp", "sketchify", "relight"}
    assert _dm(foreign, seed=3).split_ids == ids  # same seed, same split (no process state involved)
    assert _dm(foreign, seed=4).split_ids != ids
    assert load_splits(tmp_path / "out") == ids
    assert split_ids(dm.all_records, seed=3) == ids


def test_tensors_hold_the_budget_labels(foreign, tmp_path):
    dm = _dm(foreign, tmp_path / "out")
    # loop-order levels: 3 candidates x 2 rounds visited depth-first, so 1..6 attempts
    assert dm.levels == [1, 2, 3, 4, 5, 6] and dm.token_levels == [0, 96]
    t = dm.tensors("train")
    n = len(dm.split_ids["train"])
    assert t["x"].shape == (n, dm.input_dim) and dm.input_dim == 64 + dm.featurizer.image_encoder.dim
    assert t["token_pass"].shape == (n, 2)
    for rec, level, censored, token_pass in zip(
        dm.records("train"), t["level"], t["censored"], t["token_pass"], strict=True
    ):
        label = budget.loop_label(rec, dm.levels, dm.s_max, dm.unit)
        assert int(level) == label.level_index and bool(censored) == label.censored
        order = budget.loop_order(rec, 0, dm.s_max)
        passed = [a.judge is not None and a.judge.passed for a in order]
        if not label.censored:  # the need is the first passing attempt in the loop's order
            assert passed.index(True) == label.need - 1
        else:
            assert not any(passed)
        for j, tok in enumerate(dm.token_levels):
            first = [
                a.judge.passed for a in rec.attempts if a.reasoning_tokens == tok and a.round == 0 and a.judge
            ]
            if first:
                assert float(token_pass[j]) == pytest.approx(sum(first) / len(first))
    assert t["censored"].any() and (~t["censored"]).any()
    assert (t["censor_from"][t["censored"]] == len(dm.levels)).all()  # full grids: censored above all levels


def test_feature_cache_gives_identical_features(foreign, tmp_path):
    a = _dm(foreign, tmp_path / "out")
    assert any((tmp_path / "out" / "features").rglob("*.safetensors"))
    b = _dm(foreign, tmp_path / "out")  # second setup reads the cache
    c = _dm(foreign)  # no cache at all
    assert torch.equal(a.tensors("val")["x"], b.tensors("val")["x"])
    assert torch.allclose(a.tensors("val")["x"], c.tensors("val")["x"])


def test_loaders_are_deterministic_with_workers(foreign):
    dm = _dm(foreign, batch_size=16, num_workers=1, seed=7)
    first = [b[1].tolist() for b in dm.train_dataloader()]
    again = [b[1].tolist() for b in dm.train_dataloader()]
    assert first == again and sum(len(b) for b in first) == len(dm.split_ids["train"])
    assert len(next(iter(dm.val_dataloader()))) == 5


def test_unusable_datasets_fail_with_clear_errors(tmp_path):
    with pytest.raises(TraceError, match="not a directory"):
        _dm(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "t.jsonl").write_text('{"format": "ade-trace/1"}\n')
    with pytest.raises(TraceError, match="no valid records"):
        _dm(tmp_path / "bad")
    with pytest.raises(ValueError, match="fractions"):
        _dm(tmp_path / "bad", split_fractions=(0.5, 0.5, 0.5, 0.0))
    with pytest.raises(FileNotFoundError, match="ade-train card"):
        load_splits(tmp_path)
