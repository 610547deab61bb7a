"""Compute-quality curves: Best-of-N per selector and reasoning level, sweeps, paired intervals."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers.predictors import calibrator, card

from ade_runtime.offline import replay_policy
from ade_runtime.offline.curves import compute_curves, format_curves, score_selector
from ade_runtime.offline.signals import record_signals
from ade_runtime.policy import PolicyConfig, preset


@pytest.fixture
def records(testbed_records):
    return testbed_records


def test_reasoning_suffix_fixes_the_thinking_budget_of_a_baseline(records):
    cfg = preset("best_of_4@512")
    assert cfg.reasoning_tokens == 512 and cfg.default_budget == 4 and not cfg.use_card
    with pytest.raises(ValueError, match="from CARD"):
        preset("ade@512")
    cal = calibrator(bias=-4.0, weight=12.0)
    outs = replay_policy(records, "single@512", PolicyConfig(), lambda r: record_signals(r, cal))
    assert all(o.chosen[2] == 512 for o in outs)
    with pytest.raises(ValueError, match="reasoning_tokens"):
        replace(PolicyConfig(), reasoning_tokens=-1)


def test_curves_cover_every_selector_and_reasoning_level(records):
    cal, crd = calibrator(bias=-4.0, weight=12.0), card()
    from PIL import Image

    preds = {}
    for r in records:
        with Image.open(r.resolve(r.source_image)) as im:
            preds[r.id] = crd.predict(r.instruction, im.convert("RGB"))
    res = compute_curves(
        records, PolicyConfig(), lambda r: record_signals(r, cal), card=lambda r: preds[r.id]
    )
    # the fixture logs 4 candidates: the reference is the largest Best-of-N it allows
    assert res["reference"] == "best_of_4 by confidence"
    assert res["selectors"] == ["confidence", "clip_i", "clip_t", "vlm", "judge"]
    bon = [p for p in res["points"] if p["curve"].startswith("best_of_N")]
    assert {p["n"] for p in bon} == {1, 2, 4}
    assert {p["reasoning_tokens"] for p in bon} == {0, 512}
    ref = next(p for p in bon if p["selector"] == "confidence" and p["n"] == 4 and p["reasoning_tokens"] == 0)
    assert ref["vs_reference"]["diff"] == 0.0 and ref["vs_reference"]["n"] == len(records)
    judge4 = next(p for p in bon if p["selector"] == "judge" and p["n"] == 4 and p["reasoning_tokens"] == 0)
    assert judge4["mean_score"] >= max(
        p["mean_score"] for p in bon if p["n"] == 4 and p["reasoning_tokens"] == 0
    )
    # the N = 1 points agree whatever the selector: one candidate leaves nothing to select
    ones = {p["mean_score"] for p in bon if p["n"] == 1 and p["reasoning_tokens"] == 0}
    assert len(ones) == 1
    assert {p["curve"] for p in res["points"]} >= {"confidence_stop", "card_only", "ade"}
    text = format_curves(res)
    assert "small sample" in text and "best_of_N by clip_t@512" in text


def test_a_cheap_score_selector_ranks_by_its_raw_value(records):
    sig = score_selector("clip_t")(records[0])
    assert sig.preview is None and set(sig.confidence) == {a.key for a in records[0].attempts}
    assert all(sig.confidence[a.key] == a.scores["clip_t"] for a in records[0].attempts)


def test_extra_ade_policies_form_their_own_curve(records):
    cal = calibrator(bias=-4.0, weight=12.0)
    pols = {
        "strict": replace(PolicyConfig(), tau_high=0.95),
        "lenient": replace(PolicyConfig(), tau_high=0.5),
    }
    res = compute_curves(
        records, PolicyConfig(use_card=False), lambda r: record_signals(r, cal), ade_policies=pols
    )
    pts = [p for p in res["points"] if p["curve"] == "ade across targets"]
    assert [p["policy"] for p in pts] == []  # CARD policies without a CARD are skipped
    pols = {k: replace(v, use_card=False) for k, v in pols.items()}
    res = compute_curves(
        records, PolicyConfig(use_card=False), lambda r: record_signals(r, cal), ade_policies=pols
    )
    pts = {p["policy"]: p for p in res["points"] if p["curve"] == "ade across targets"}
    assert set(pts) == {"strict", "lenient"}
    assert pts["strict"]["nfe_per_request"] >= pts["lenient"]["nfe_per_request"]
