"""CARD that earns its place (issue 14): loop-order labels, tokens by gain per cost, hopeless requests,
the per-category prior exported in CARD's format, the choice of export, the ablation bench."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FIXTURE_SMALL
from helpers.foreign import write_foreign_traces
from helpers.predictors import calibrator, card

from ade_runtime.loop import AdaptiveEditor
from ade_runtime.policy import PolicyConfig, budget
from ade_runtime.predictors.budget_prediction import BudgetPrediction, choose_tokens
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.testbed.backbone import SyntheticBackbone
from ade_runtime.traces import load_records
from ade_runtime.traces.records import Attempt, Cost, EditRecord, Judge
from ade_train.bench import card_ablation
from ade_train.card.choice import calibrate_beyond_budget, choose_export
from ade_train.card.data import TraceDataModule
from ade_train.card.module import CardModule

FIXTURE = FIXTURE_SMALL


def _record(passes: dict[tuple[int, int, int], bool], candidates=2, rounds=3, tokens=(0, 512)) -> EditRecord:
    attempts = [
        Attempt(c, r, t, "p", Cost(10, 1.0 + t / 256), judge=Judge(0.9 if passes.get((c, r, t)) else 0.1, bool(passes.get((c, r, t)))))
        for t in tokens
        for c in range(candidates)
        for r in range(rounds)
    ]  # fmt: skip
    return EditRecord("r", "make it blue", "s.png", "testbed:x", attempts, category="color")


def test_loop_order_is_depth_first_and_cut_at_s_max():
    rec = _record({(1, 0, 0): True, (0, 0, 512): True})
    order = budget.loop_order(rec, 0, s_max=3)
    assert [(a.candidate, a.round) for a in order] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [(a.candidate, a.round) for a in budget.loop_order(rec, 0, s_max=2)] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    levels = budget.loop_levels([rec], 3)
    assert levels == [1, 2, 3, 4, 5, 6]
    label = budget.loop_label(rec, levels, 3, "seconds")
    # the loop runs c0's chain first: the first pass is its 4th attempt (the rectangle label would say 2)
    assert label.need == 4 and not label.censored and label.cost == pytest.approx(4.0)
    assert budget.budget_label(rec, budget.budget_levels([rec]), "seconds").attempts == 2
    assert budget.loop_label(rec, levels, 2, "seconds").need == 3
    assert label.token_pass == {0: 0.5, 512: 0.5}
    hopeless = budget.loop_label(_record({}), levels, 3)
    assert hopeless.censored and hopeless.level_index == len(levels) and hopeless.length == 6


def test_tokens_by_gain_per_cost_pinned():
    s = [8.0, 23.36]  # the testbed's BAGEL: 512 tokens nearly triple an attempt's seconds
    assert choose_tokens([0, 512], [0.2, 0.5], s) == 0  # 2.5x the pass rate for 2.9x the cost: not worth it
    assert choose_tokens([0, 512], [0.1, 0.45], s) == 512  # 4.5x for 2.9x: fewer seconds per pass
    assert choose_tokens([0, 512], [0.2, 0.5], s, gain_per_cost=0.0) == 512  # any gain
    assert choose_tokens([0, 512], [0.5, 0.5], s, gain_per_cost=0.0) == 0  # no gain, no tokens
    b = BudgetPrediction([1, 2], [0.5, 0.3, 0.2], [0, 512], [0.1, 0.45], [0.1, 0.45], s, 1.0)
    assert b.reasoning_tokens == 512 and b.explain(0.5)["token_pass"] == {"0": 0.1, "512": 0.45}


def test_hopeless_requests_get_the_give_up_budget_never_the_largest():
    b = BudgetPrediction([1, 2, 4, 8], [0.1, 0.1, 0.05, 0.05, 0.7], [0], [1.0], beyond_budget=2)
    assert b.hopeless(0.8) and b.quantile(0.8) == 2
    assert not b.hopeless(0.2) and b.quantile(0.2) == 2
    assert BudgetPrediction([1, 2, 4, 8], [0.1, 0.1, 0.05, 0.05, 0.7], [0], [1.0]).quantile(0.8) == 1


def test_beyond_budget_grows_only_while_it_buys_passes_as_cheaply():
    # 6 hopeless requests whose single pass (if any) comes late: more attempts buy passes dearly
    hopeless = [_record({}) for _ in range(5)] + [_record({(1, 2, 0): True})]
    easy = [_record({(0, 0, 0): True}) for _ in range(6)]
    levels = list(range(1, 7))
    p_hopeless = BudgetPrediction(levels, [0.01] * 6 + [0.94], [0, 512], [0.1, 0.2])
    p_easy = BudgetPrediction(levels, [0.9] + [0.02] * 5 + [0.0], [0, 512], [0.9, 0.9])
    out = calibrate_beyond_budget([p_hopeless] * 6 + [p_easy] * 6, hopeless + easy, levels, 0.8, 3, "seconds")
    assert out["beyond_budget"] == 1 and out["n_hopeless"] == 6
    # when hopeless requests pass as cheaply as the rest, the budget grows
    cheap = [_record({(0, 1, 0): True}) for _ in range(6)]
    out = calibrate_beyond_budget([p_hopeless] * 6 + [p_easy] * 6, cheap + easy, levels, 0.8, 3, "seconds")
    assert out["beyond_budget"] == 2


def _prior_config(feat_dim: int) -> CardConfig:
    return CardConfig(
        input_dim=feat_dim, levels=[1, 2, 4], token_levels=[0, 512], hidden=[8], token_target="pass",
        token_seconds=[8.0, 23.36], gain_per_cost=1.0, beyond_budget=1,
        category_probs={"color": [0.7, 0.2, 0.05, 0.05], "*": [0.1, 0.1, 0.1, 0.7]},
        category_token_pass={"color": [0.6, 0.7], "*": [0.05, 0.4]},
    )  # fmt: skip


def test_category_prior_round_trips_in_cards_format(tmp_path):
    c = card()
    prior = CardPredictor(CardModel(_prior_config(c.featurizer.dim)), c.featurizer)
    prior.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "card.safetensors"]
    back = CardPredictor.from_pretrained(tmp_path)
    assert back.config == prior.config and back.config.is_prior
    color = back.predict("make it blue", None, category="color")
    assert color.probs == [0.7, 0.2, 0.05, 0.05] and color.quantile(0.8) == 2 and color.reasoning_tokens == 0
    unknown = back.predict("make it blue", None)  # no category: the all-categories row
    assert unknown.hopeless(0.8) and unknown.quantile(0.8) == 1 and unknown.reasoning_tokens == 512
    with pytest.raises(ValueError, match="'\\*'"):
        CardConfig(input_dim=4, levels=[1], category_probs={"a": [0.5, 0.5]})


def test_loop_logs_the_budget_and_token_choice(tmp_path):
    import numpy as np

    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.testbed import World
    from ade_runtime.testbed.imageio import make_image

    c = card(levels=(1, 2, 3))
    prior = CardPredictor(CardModel(_prior_config(c.featurizer.dim)), c.featurizer)
    world = World(seed=3)
    r = world.sample_request(np.random.default_rng(100))
    req = EditRequest(make_image(r.source, r.source, world.size), r.instruction, "q1", category="other")
    res = AdaptiveEditor(
        SyntheticBackbone(), Predictors(card=prior, calibrator=calibrator(-6.0)), policy=PolicyConfig(s_max=1)
    ).edit(req)
    assert res.decisions[0]["action"] == "budget" and "hopeless" in res.decisions[0]["reason"]
    assert res.card["hopeless"] and res.card["source"] == "category_prior" and res.budget == 1
    assert res.reasoning_tokens == 512 == res.card["reasoning_tokens"]
    assert len(res.attempts) == 1 and res.stop_reason == "budget"  # gave up, returned the best so far
    json.dumps(res.card)


def test_prior_is_exported_when_card_does_not_beat_it(tmp_path):
    data = write_foreign_traces(tmp_path / "acme", n=120, seed=3)
    dm = TraceDataModule(
        str(data), text_encoder={"kind": "hashing", "dim": 32}, image_encoder={"kind": "none"}
    )
    dm.setup("fit")
    module = CardModule(dm.input_dim, dm.levels, dm.token_levels, hidden=[8])
    with torch.no_grad():  # a badly trained CARD: confidently wrong everywhere
        module.model.budget_head.bias.copy_(torch.linspace(-20, 20, module.config.n_budget_classes))
    choice = choose_export(module, dm)
    assert choice.source == "category_prior" and choice.predictor.config.is_prior
    # the rule compares label-free predictors: CARD against the prior fed by the inferred category
    assert (
        choice.nll["val/card_nll"] > choice.nll["val/inferred_prior_nll"] and "does not beat" in choice.reason
    )
    assert {"val/prior_nll", "test/card_nll", "test/category_prior_nll", "test/inferred_prior_nll"} <= set(
        choice.nll
    )
    cfg = choice.predictor.config
    assert cfg.categories == sorted({str(r.category) for r in dm.records("train")})
    assert choice.thresholds["category_classifier"]["classes"] == len(cfg.categories)
    th = choice.thresholds
    assert th["beyond_budget"]["beyond_budget"] in dm.levels and "why" in th["gain_per_cost"]
    assert not choice.alternative.config.is_prior
    choice.predictor.save_pretrained(tmp_path / "e")
    assert CardPredictor.from_pretrained(tmp_path / "e").config == choice.predictor.config


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="testbed fixture not present")
def test_ablation_bench_shape():
    records = load_records(FIXTURE)[0][:12]
    c = card(levels=tuple(range(1, 9)))
    prior = CardPredictor(
        CardModel(
            CardConfig(
                input_dim=c.featurizer.dim, levels=list(range(1, 9)), token_levels=[0, 512], hidden=[8],
                category_probs={"*": [1 / 9] * 9},
            )
        ),
        c.featurizer,
    )  # fmt: skip
    res = card_ablation.run(records, Predictors(card=c, calibrator=calibrator(0.0, 4.0)), prior=prior)
    assert set(res["arms"]) == {
        "card", "category_prior", "constant", "constant_matched", "tokens_never", "tokens_always", "tokens_card",
    }  # fmt: skip
    assert (
        res["arms"]["tokens_always"]["think_rate"] == 1.0 and res["arms"]["tokens_never"]["think_rate"] == 0.0
    )
    assert len(res["comparisons"]) == 5 and all(c["score"]["n"] == 12 for c in res["comparisons"])
    assert set(res["targets"]) == {"tokens_beat_never", "tokens_beat_always", "card_no_dearer_than_constant"}
    assert [r["gain_per_cost"] for r in res["sweep"]] == list(card_ablation.SWEEP)
    for row in res["sweep"]:  # the random control thinks on as many requests as CARD does
        assert row["card"]["think_rate"] == row["random"]["think_rate"]
    assert "target" in card_ablation.text(res)
    json.dumps(res)
