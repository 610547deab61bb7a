"""The CARD-phrasing bench part on the committed testbed fixture: twins keep their edits and attempts
but change their words, every arm is paired on the same requests, and the targets can fail."""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURE_SMALL
from helpers.predictors import calibrator, card

from ade_runtime.predictors.bundle import Predictors
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.testbed.instructions import parse
from ade_runtime.traces import load_records
from ade_train.bench import card_phrasing

pytestmark = pytest.mark.skipif(not FIXTURE_SMALL.is_dir(), reason="testbed fixture not present")


def _arms():
    c = card(levels=tuple(range(1, 9)), beyond_budget=2)
    c.model.config.compound_parts = True
    prior = CardPredictor(
        CardModel(
            CardConfig(
                input_dim=c.featurizer.dim, levels=list(range(1, 9)), token_levels=[0, 512], hidden=[8],
                category_probs={"*": [0.5] + [0.5 / 8] * 8},
            )
        ),
        c.featurizer,
    )  # fmt: skip
    return c, prior


def test_twin_keeps_edits_and_attempts_but_not_words():
    rec = load_records(FIXTURE_SMALL)[0][0]
    t = card_phrasing.twin(rec)
    assert t.instruction != rec.instruction and parse(t.instruction) == parse(rec.instruction)
    assert t.attempts == rec.attempts and t.id == rec.id
    assert card_phrasing.twin(rec).instruction == t.instruction  # deterministic per id


def test_part_is_paired_and_renders(tmp_path):
    records = load_records(FIXTURE_SMALL)[0][:16]
    c, prior = _arms()
    fig = card_phrasing.run(records, Predictors(card=c, calibrator=calibrator(0.0, 4.0)), prior)
    assert set(fig["summary"]) == {"export", "constant", "alternative"}
    comps = fig["comparisons"]
    assert {
        "export_heldout_vs_standard",
        "export_vs_constant_heldout",
        "export_vs_alternative_heldout",
    } <= set(comps)
    assert all(c["nll"]["n"] == fig["n_requests"] for c in comps.values())
    assert sum(r["n"] for r in fig["by_category"].values()) == fig["n_requests"]
    cp = fig["compound"]
    assert cp["rule_holds"] == cp["n"]  # the export applies the clause rule
    # the constant arm reads no text: its NLL is the same in both phrasings, request by request
    s = fig["summary"]["constant"]
    assert s["standard"]["nll"] == pytest.approx(s["heldout"]["nll"])
    md, targets, misses = card_phrasing.render(json.loads(json.dumps(fig)))
    assert md[0].startswith("## ") and len(targets) == 4  # tokens, phrasing, constant, compound (no ade-edit)
    tk = fig["tokens"]
    assert set(tk["arms"]) == {"never", "always", "card"} and 0.0 <= tk["requests_whose_cost_changed"] <= 1.0
    assert tk["card_minus_line"]["n"] == fig["n_requests"]
    assert len(misses) == sum(not t["met"] for t in targets)


def test_targets_fail_when_heldout_is_worse():
    fig = {
        "comparisons": {
            "export_heldout_vs_standard": {"nll": {"diff": 0.2, "lo": 0.1, "hi": 0.3, "verdict": "win"}},
            "export_vs_constant_heldout": {"nll": {"diff": 0.05, "lo": -0.01, "hi": 0.1, "verdict": "level"}},
        },
        "compound": {"n": 4, "rule_holds": 3},
    }
    targets = card_phrasing.targets_of(fig)
    assert [t["met"] for t in targets] == [False, False, False]
    fig["comparisons"]["export_heldout_vs_standard"]["nll"].update(lo=-0.01)
    fig["comparisons"]["export_vs_constant_heldout"]["nll"].update(hi=-0.01)
    fig["compound"]["rule_holds"] = 4
    assert all(t["met"] for t in card_phrasing.targets_of(fig))


def test_ade_edit_check_runs_the_cli_without_a_category(tmp_path):
    """The done-when check itself: ade-edit is run as a user runs it, and its trace says where the budget
    came from (here a tiny untrained CARD export: budgets may or may not differ)."""
    from ade_runtime.policy import PolicyConfig

    export = tmp_path / "export"
    c = card(levels=(1, 2, 4))
    c.model.config.compound_parts = True  # as every export since the clause rule
    c.save_pretrained(export)
    calibrator(-1.0, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(export)
    res = card_phrasing.ade_edit_check(export, tmp_path / "work", allow_fallback=True)  # no critique here
    for k in ("easy", "hard"):
        assert res[k]["budget"] >= 1 and res[k]["budget_source"] == "card" and res[k]["use_card"] is True
    assert res["hard"]["category_of_the_request"] == "compose" and res["hard"]["compound_parts"]
    assert res["differ"] == (res["easy"]["budget"] != res["hard"]["budget"])


def test_token_line_says_when_thinking_is_worse_than_its_cost():
    ids = [f"r{i}" for i in range(50)]
    never = {"score": dict.fromkeys(ids, 0.5), "seconds": dict.fromkeys(ids, 10.0)}
    always = {"score": dict.fromkeys(ids, 0.9), "seconds": dict.fromkeys(ids, 30.0)}
    bad = {
        "score": dict.fromkeys(ids, 0.55),
        "seconds": dict.fromkeys(ids, 20.0),
    }  # half the cost, 1/8 the gain
    res = card_phrasing.token_line({"never": never, "always": always, "card": bad})
    assert res["position_on_line"] == pytest.approx(0.5)
    assert res["card_minus_line"]["diff"] == pytest.approx(-0.15) and res["card_minus_line"]["hi"] < 0
    same = card_phrasing.token_line({"never": never, "always": always, "card": never})
    assert same["card_minus_line"]["diff"] == 0.0 and same["requests_whose_cost_changed"] == 0.0


def test_plot_is_written(tmp_path):
    fig = {"n_requests": 3, "by_category": {c: {"export_standard_nll": 1.0, "export_heldout_nll": 1.1,
                                                 "constant_standard_nll": 1.3} for c in ("color", "add")}}  # fmt: skip
    card_phrasing.plot(fig, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
