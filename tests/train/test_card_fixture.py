"""CARD on the testbed fixture (tests/fixtures/testbed_small): label sanity and a tiny training run."""

from __future__ import annotations

import pytest
from helpers import FIXTURES

from ade_runtime.policy import budget
from ade_runtime.predictors.card import CardPredictor
from ade_runtime.traces import load_records
from ade_train.card import build_config, train
from ade_train.card.data import TraceDataModule
from ade_train.card.metrics import card_metrics, prior_probs
from ade_train.export import read_manifest

FIXTURE = FIXTURES / "testbed_small"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="testbed fixture not present")


def test_budget_labels_on_the_fixture_are_sane():
    records, rejects = load_records(FIXTURE)
    assert records and not rejects
    unit = budget.cost_unit(records)
    levels = budget.budget_levels(records)
    assert levels == sorted(set(levels)) and levels[0] == 1
    n_censored = 0
    for rec in records:
        label = budget.budget_label(rec, levels, unit)
        assert label is not None
        points = budget.grid_points(rec, unit)
        passing = [(cost, p) for p, cost, ok in points if ok]
        if label.censored:
            n_censored += 1
            assert not passing and not any(a.judge and a.judge.passed for a in rec.attempts)
            continue
        # the label is the cheapest passing grid point and its level holds its attempts
        assert label.cost == min(cost for cost, _ in passing)
        assert levels[label.level_index] == label.point.attempts
        assert label.reasoning_tokens in {a.reasoning_tokens for a in rec.attempts}
    assert 0 < n_censored < len(records)


def test_tiny_training_run_on_the_fixture(tmp_path):
    cfg = build_config(
        ["--data", str(FIXTURE), "--out", str(tmp_path), "--no-wandb", "--max-epochs", "30",
         "--trainer.enable_progress_bar=false", "--data.text_encoder={kind: hashing, dim: 128}",
         "--model.hidden=[32]", "--model.lr=0.003", "--early_stopping_patience=null",
         "--data.split_fractions=[0.7,0.1,0.1,0.1]"]  # 28 training requests of 40 (the default keeps 16)
    )  # fmt: skip
    m = train(cfg)
    assert m["epochs"] == 30 and all(k in m for k in ("test/spearman", "test/cov@0.8", "test/token_brier"))
    section = read_manifest(tmp_path / "export")["predictors"]["card"]
    assert section["data"]["source"] == "testbed"
    assert "synthetic testbed" in (tmp_path / "export" / "README.md").read_text()
    # 40 requests leave 4 test requests: held-out numbers are noise here (the foreign-dataset test and
    # the benchmark measure generalisation); the exported model must at least have learnt its data
    card = CardPredictor.from_pretrained(tmp_path / "export")
    dm = TraceDataModule(
        str(FIXTURE), text_encoder={"kind": "hashing", "dim": 128}, split_fractions=(0.7, 0.1, 0.1, 0.1)
    )
    dm.setup("fit")
    t = dm.tensors("train")
    probs, tprobs = card.predict_proba(t["x"])
    fit = card_metrics(probs, tprobs, t["level"], t["censored"], t["token_pass"], card.config.levels)
    prior = prior_probs(t["level"], t["censored"], len(card.config.levels) + 1, len(probs))
    constant = card_metrics(prior, tprobs, t["level"], t["censored"], t["token_pass"], card.config.levels)
    assert constant["spearman"] == 0.0 and fit["spearman"] > 0.3
    assert fit["mae"] < constant["mae"]
