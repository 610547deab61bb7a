"""CARD without a label at run time: the per-category prior fed by a category classifier trained on the
same requests, the budget's source recorded in the trace, and a replay that never credits a label
that the live request did not carry."""

from __future__ import annotations

import numpy as np
import torch
from helpers.predictors import calibrator, card

from ade_runtime.backbones.base import EditRequest
from ade_runtime.loop import AdaptiveEditor
from ade_runtime.offline.signals import card_prediction
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.testbed import World
from ade_runtime.testbed.backbone import SyntheticBackbone
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceWriter, load_records
from ade_runtime.traces.serving import log_request
from ade_train.card.category import fit_category_classifier

EASY, HARD = "color", "action"
ROWS = {EASY: [0.8, 0.15, 0.03, 0.02], HARD: [0.05, 0.1, 0.75, 0.1], "*": [0.4, 0.2, 0.2, 0.2]}
TOKENS = {EASY: [0.6, 0.62], HARD: [0.1, 0.5], "*": [0.3, 0.5]}


def _requests(n: int, seed: int):
    world = World(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = world.sample_request(rng, (EASY, HARD) if i % 2 else (HARD, EASY))
        out.append((make_image(r.source, r.source, world.size), r.instruction, r.category))
    return out


def _inferred_prior() -> tuple[CardPredictor, list]:
    base = card(levels=(1, 2, 4))
    feat = base.featurizer
    train, val = _requests(120, seed=11), _requests(40, seed=12)
    x_train = feat.featurize([t for _, t, _ in train], [im for im, _, _ in train])
    x_val = feat.featurize([t for _, t, _ in val], [im for im, _, _ in val])
    cfg = CardConfig(
        input_dim=feat.dim, levels=[1, 2, 4], token_levels=[0, 512], hidden=[8], token_target="pass",
        token_seconds=[8.0, 23.36], gain_per_cost=1.0, beyond_budget=1,
        category_probs=ROWS, category_token_pass=TOKENS, categories=[EASY, HARD],
    )  # fmt: skip
    model = CardModel(cfg)
    model.set_feature_stats(x_train)
    z = lambda x: (x - model.feature_mean) / model.feature_std  # noqa: E731
    clf = fit_category_classifier(z(x_train), [c for *_, c in train], z(x_val), [c for *_, c in val])
    assert clf is not None and clf.names == sorted([EASY, HARD])
    assert clf.val_accuracy >= 0.9, clf.summary()  # the instruction says which edit it is
    with torch.no_grad():
        order = [clf.names.index(c) for c in cfg.categories]
        model.category_head.weight.copy_(clf.weight[order])
        model.category_head.bias.copy_(clf.bias[order])
    return CardPredictor(model, feat), _requests(20, seed=13)


def test_budgets_adapt_without_a_label_and_round_trip(tmp_path):
    prior, fresh = _inferred_prior()
    prior.save_pretrained(tmp_path)
    back = CardPredictor.from_pretrained(tmp_path)
    assert back.config == prior.config and back.config.categories == [EASY, HARD]
    budgets = {EASY: [], HARD: []}
    for image, text, cat in fresh:
        p = back.predict(text, image)  # no category: inferred from the request
        assert p.source == "prior:inferred" and p.category in (EASY, HARD)
        assert 0.5 <= p.category_confidence <= 1.0
        assert abs(sum(p.probs) - 1) < 1e-5  # a mixture of the rows is a distribution
        budgets[cat].append(p.quantile(0.8))
    # easy edits get the easy row's budget, hard ones the hard row's: different budgets, no label
    assert np.mean(budgets[EASY]) < np.mean(budgets[HARD])
    assert set(budgets[EASY]) == {2} and set(budgets[HARD]) == {4}
    image, text, _ = fresh[0]
    given = back.predict(text, image, category=HARD)  # a caller's label is used as given, and said so
    assert given.source == "prior:given" and given.probs == ROWS[HARD] and given.category == HARD
    unknown = back.predict(text, image, category="not-a-category")  # unknown label: inferred instead
    assert unknown.source == "prior:inferred"


def test_the_trace_records_the_budget_source_and_replay_reads_only_given_labels(tmp_path):
    prior, fresh = _inferred_prior()
    editor = AdaptiveEditor(
        SyntheticBackbone(), Predictors(card=prior, calibrator=calibrator(2.0)), policy=PolicyConfig(s_max=1)
    )
    (img_a, text_a, cat_a), (img_b, text_b, cat_b) = fresh[0], fresh[1]
    with TraceWriter(tmp_path / "t") as w:
        unlabeled = editor.edit(EditRequest(img_a, text_a, "u1"))
        log_request(w, unlabeled.request, unlabeled, "testbed")
        labeled = editor.edit(EditRequest(img_b, text_b, "g1", category=cat_b))
        log_request(w, labeled.request, labeled, "testbed")
    assert unlabeled.card["budget_source"] == "prior:inferred" and unlabeled.card["category"] == cat_a
    assert "category inferred from the request" in unlabeled.decisions[0]["reason"]
    assert labeled.card["budget_source"] == "prior:given"
    records, rejects = load_records(tmp_path / "t", images="decode")
    assert not rejects
    by_id = {r.id: r for r in records}
    assert by_id["u1"].meta["ade"]["card"]["budget_source"] == "prior:inferred"
    # replay makes the live loop's prediction, from what the trace says the request carried
    for rid, live in (("u1", unlabeled), ("g1", labeled)):
        rec = by_id[rid]
        p = card_prediction(rec, prior)
        assert p.source == live.card["budget_source"] and p.quantile(0.8) == live.card["budget"]
    # a dataset label the live request did not carry (the testbed's, a labelling job's) is not read
    rec = by_id["u1"]
    rec.category = HARD if cat_a == EASY else EASY
    assert card_prediction(rec, prior).source == "prior:inferred"
