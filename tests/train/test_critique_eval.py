"""Critique evaluation and the refine-or-fresh rule: held-out selection metrics, the trees baseline,
the head's optional cheap-score inputs, and ``ade-train refine-rule`` on traces collected with the
critique writing the refinements (``ade-collect --predictors``, judged by ``ade-judge``).

Tiny models are built from configs in code; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os

import helpers.predictors as helper_predictors
import numpy as np
import pytest
import torch
from helpers import FIXTURES
from helpers.predictors import TINY_DINO
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ade_runtime.errors import InputError
from ade_runtime.predictors import should_refine
from ade_runtime.predictors.critique import CritiquePredictor
from ade_runtime.traces import load_records
from ade_train.critique.evaluate import TreesBaseline, selection_metrics, within_request_auroc
from ade_train.critique.examples import cap_examples, collect_examples
from ade_train.critique.refine import RefineCase, RefineRule, fit_part, fit_report, rule_value

FIXTURE = FIXTURES / "testbed_small"


def _predictor(**overrides) -> CritiquePredictor:
    spec = {"kind": "dinov2", "config": TINY_DINO, "image_size": 64, "resize_size": 64, "seed": 3}
    return helper_predictors.critique(
        spec, kinds=("leakage", "wrong_color"), text_dim=64, hidden=32, encoder_trained=True, **overrides
    )


def _images(size: int = 64) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = src.copy()
    out[10:30, 30:60] = (40, 80, 220)
    return Image.fromarray(src), Image.fromarray(out)


# ---- selection metrics -------------------------------------------------------------------------------


def test_within_request_auroc_averages_requests_with_both_outcomes():
    p = [0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.3]
    y = [1, 0, 1, 1, 0, 1, 1]
    g = ["a", "a", "b", "b", "b", "c", "c"]  # c has passes only: left out
    # a: 1.0; b: passes 0.5, 0.2 vs fail 0.8 -> 0.0
    assert within_request_auroc(p, y, g) == (0.5, 2)
    m = selection_metrics(p, y, g)
    assert m["within_auroc"] == 0.5 and m["within_requests"] == 2
    assert m["brier"] == pytest.approx(np.mean((np.array(p) - np.array(y)) ** 2))
    assert 0 <= m["ece"] <= 1 and 0 <= m["auroc"] <= 1
    assert np.isnan(within_request_auroc([0.5], [1], ["x"])[0])


def test_caps_take_whole_requests_and_distinct_images_keep_their_weight():
    records, _ = load_records(FIXTURE, images="none")
    examples = collect_examples(records).examples
    capped = cap_examples(examples, 100, seed=0)
    per_request = {}
    for ex in examples:
        per_request[ex.record_id] = per_request.get(ex.record_id, 0) + 1
    kept = {ex.record_id for ex in capped}
    assert len(capped) <= 100 and sum(per_request[r] for r in kept) == len(capped)  # whole requests
    # testbed attempts are each their own sample (imageio.grain): repeat some, as a user's data may
    # (a deterministic sampler, a resubmitted image), so that distinct has duplicates to merge
    examples = examples + [dataclasses.replace(ex) for ex in examples[:50]]
    distinct = cap_examples(examples, None, seed=0, distinct=True)
    assert len(distinct) == len(examples) - 50
    assert sum(ex.weight for ex in distinct) == len(examples)  # every attempt still counts once
    assert len({(ex.record_id, ex.attempt, ex.passed) for ex in distinct}) == len(distinct)
    rate = np.mean([ex.passed for ex in examples])
    weighted = sum(ex.weight * ex.passed for ex in distinct) / sum(ex.weight for ex in distinct)
    assert weighted == pytest.approx(rate)
    assert all(dict(ex.scores).keys() >= {"clip_t", "clip_i"} for ex in examples)


def test_trees_baseline_on_difference_maps_beats_chance_on_held_out_requests():
    records, _ = load_records(FIXTURE, images="none")
    records.sort(key=lambda r: r.id)
    train = collect_examples(records[:28]).examples
    test = collect_examples(records[28:]).examples
    trees = TreesBaseline(seed=0, max_iter=50).fit(cap_examples(train, None, 0, distinct=True))
    p = trees.predict_proba(test)
    assert p.shape == (len(test),) and ((p >= 0) & (p <= 1)).all()
    m = selection_metrics(p, [ex.passed for ex in test], [ex.record_id for ex in test])
    assert m["auroc"] > 0.6
    pixels = TreesBaseline(seed=0, max_iter=50, cheap_scores=()).fit(train)
    assert pixels.score_names == () and trees.score_names == ("clip_i", "clip_t")
    with pytest.raises(RuntimeError, match="fit"):
        TreesBaseline().predict_proba(test)


# ---- the head's cheap-score inputs --------------------------------------------------------------------


def test_score_inputs_are_read_by_name_and_missing_ones_are_masked(tmp_path):
    pred = _predictor(score_inputs=("clip_i", "clip_t"))
    with torch.no_grad():  # make the score path matter
        pred.head.pass_out.weight.normal_(0, 1.0)
    src, out = _images()
    base = pred.predict(src, out, "make it blue")
    same = pred.predict(src, out, "make it blue", scores={"clip_t": float("nan"), "other": 1.0})
    high = pred.predict(src, out, "make it blue", scores={"clip_t": 0.9, "clip_i": 0.8})
    assert base.p_pass == pytest.approx(same.p_pass, abs=1e-7)  # nothing usable given = none given
    assert high.p_pass != pytest.approx(base.p_pass, abs=1e-4)
    assert base.flaw_map.shape == high.flaw_map.shape
    np.testing.assert_allclose(base.flaw_map, high.flaw_map, atol=1e-6)  # scores feed the pass read-out only
    with pytest.raises(InputError, match="scores"):
        pred.predict_batch([src, src], [out, out], ["a", "b"], scores=[None])
    pred.save_pretrained(tmp_path)
    loaded = CritiquePredictor.from_pretrained(tmp_path)
    again = loaded.predict(src, out, "make it blue", scores={"clip_t": 0.9, "clip_i": 0.8})
    assert loaded.config.score_inputs == ("clip_i", "clip_t")
    assert again.p_pass == pytest.approx(high.p_pass, abs=1e-6)


def test_artifact_without_the_new_keys_loads_as_before(tmp_path):
    """An artifact exported before score_inputs / refine_threshold existed loads with their defaults."""
    pred = _predictor()
    pred.save_pretrained(tmp_path)
    path = tmp_path / "critique.json"
    meta = json.loads(path.read_text())
    for key in ("score_inputs", "refine_threshold"):
        meta["config"].pop(key)
    path.write_text(json.dumps(meta, sort_keys=True))
    loaded = CritiquePredictor.from_pretrained(tmp_path)
    assert loaded.config.score_inputs == () and loaded.config.refine_threshold == 0.0
    src, out = _images()
    assert loaded.predict(src, out, "x").p_pass == pytest.approx(pred.predict(src, out, "x").p_pass, abs=1e-6)


# ---- refine or fresh ----------------------------------------------------------------------------------


def test_should_refine_follows_the_pointing_confidence():
    pred = _predictor(pass_threshold=1.0)  # every attempt fails: the critique always points somewhere
    src, out = _images()
    crit = pred.predict(src, out, "make it blue")
    assert crit.flaws and crit.pointing_confidence == pytest.approx(crit.flaw_scores[0])
    assert pred.should_refine(crit)  # default threshold 0: always refine, behaviour unchanged
    assert should_refine(crit, crit.pointing_confidence)
    assert not should_refine(crit, min(1.0, crit.pointing_confidence + 1e-3))
    with pytest.raises(InputError, match="refine_threshold"):
        _predictor(refine_threshold=1.5)


def test_refine_rule_picks_the_threshold_with_the_best_outcome():
    cases = [
        RefineCase("r1", 0.9, refined=0.9, fresh=0.5),
        RefineCase("r1", 0.8, refined=0.7, fresh=0.5),
        RefineCase("r2", 0.3, refined=0.2, fresh=0.6),
        RefineCase("r3", 0.2, refined=0.1, fresh=0.4),
    ]
    rule = RefineRule().fit(cases)
    assert rule.threshold_ == pytest.approx(0.55)  # refine the two confident ones only
    assert list(rule.predict([0.9, 0.3])) == [True, False]
    assert rule_value(cases, 0.0) == pytest.approx(0.475)
    assert rule_value(cases, rule.threshold_) == pytest.approx((0.9 + 0.7 + 0.6 + 0.4) / 4)
    assert rule.values_.max() == pytest.approx(0.65) and 0.0 in rule.candidates_ and 1.0 in rule.candidates_
    # refinement always better: the lowest threshold (always refine) wins the tie
    assert (
        RefineRule().fit([RefineCase("a", 0.4, 1.0, 0.0), RefineCase("b", 0.6, 1.0, 0.0)]).threshold_ == 0.0
    )
    report = fit_report(cases)
    assert report["threshold"] == pytest.approx(0.55) and report["cases"] == 4 and report["requests"] == 3
    assert report["never_refine"] == pytest.approx(0.5) and report["always_refine"] == pytest.approx(0.475)
    with pytest.raises(InputError):
        RefineRule().fit([])


def test_refine_rule_cli_on_traces_the_critique_refined(tmp_path, capsys):
    from ade_runtime.cli import collect
    from ade_runtime.testbed import World, save_png
    from ade_runtime.testbed.imageio import make_image
    from ade_train.cli import main as train_main
    from ade_train.judge.cli import main as judge_main

    export = tmp_path / "export"
    _predictor(pass_threshold=0.99).save_pretrained(export)  # fails most attempts: writes feedback
    world = World(seed=11)
    lines = []
    for i in range(3):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), tmp_path / f"src{i}.png")
        lines.append({"id": f"q{i}", "image": f"src{i}.png", "instruction": r.instruction})
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    collected, judged = tmp_path / "collected", tmp_path / "judged"
    argv = ["--backbone", "testbed", "--requests", str(tmp_path / "requests.jsonl"), "--out", str(collected),
            "--candidates", "3", "--rounds", "2", "--predictors", str(export), "--allow-fallback"]  # fmt: skip
    assert collect.main(argv) == 0
    records, _ = load_records(collected, images="none")
    refined = [a for r in records for a in r.attempts if a.round == 1]
    assert refined and any(a.prompt != r.instruction for r in records for a in r.attempts if a.round == 1)
    assert (
        judge_main(["--traces", str(collected), "--out", str(judged), "--judge", "testbed", "--no-progress"])
        == 0
    )
    capsys.readouterr()
    assert train_main(["refine-rule", "--data", str(judged), "--predictors", str(export), "--write"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["cases"] >= 1 and 0.0 <= report["threshold"] <= 1.0
    assert report["rule"] >= max(report["always_refine"], report["never_refine"]) - 1e-9
    loaded = CritiquePredictor.from_pretrained(export)
    assert loaded.config.refine_threshold == pytest.approx(report["threshold"])
    meta = json.loads((export / "critique.json").read_text())
    assert meta["metrics"]["refine/threshold"] == pytest.approx(report["threshold"])
    # not judged traces: one line naming what is missing, exit 2
    assert train_main(["refine-rule", "--data", str(collected), "--predictors", str(export)]) == 2
    err = capsys.readouterr().err
    assert "ade-judge" in err and "Traceback" not in err
    assert train_main(["refine-rule", "--data", str(tmp_path / "nope"), "--predictors", str(export)]) == 2


def test_patch_pixel_diff_on_the_encoder_grid(tmp_path):
    from ade_runtime.predictors.critique import patch_pixel_diff

    src = np.zeros((64, 64, 3), np.uint8)
    out = src.copy()
    out[:32, :32] = 255  # the top-left quarter changed to white
    d = patch_pixel_diff(Image.fromarray(src), Image.fromarray(out), (2, 2))
    np.testing.assert_allclose(d, [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    # the encoder's view window: the right half only sees no change
    right = patch_pixel_diff(Image.fromarray(src), Image.fromarray(out), (2, 2), (0.5, 0.0, 1.0, 1.0))
    assert right.max() == 0.0
    pred = _predictor(pixel_diff=True)
    a, b = _images()
    crit = pred.predict(a, b, "make it blue")
    pred.save_pretrained(tmp_path)
    loaded = CritiquePredictor.from_pretrained(tmp_path)
    assert loaded.config.pixel_diff and loaded.predict(a, b, "make it blue").p_pass == pytest.approx(
        crit.p_pass
    )
    with pytest.raises(InputError, match="pixel_diff"):
        pred.head(torch.zeros(1, 64, 32), torch.zeros(1, 64, 32), torch.zeros(1, 64))


def test_rank_loss_and_request_batches():
    from ade_train.critique.data import RequestBatches
    from ade_train.critique.module import within_request_rank_loss

    logits, passed = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    loss = within_request_rank_loss(logits, passed, torch.tensor([0, 0, 1]), torch.ones(3))
    assert float(loss) == pytest.approx(np.log1p(np.exp(-2.0)))  # the one (pass, fail) pair of request 0
    assert float(within_request_rank_loss(logits, passed, torch.tensor([0, 1, 2]), torch.ones(3))) == 0.0
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2
    sampler = RequestBatches(groups, batch_size=4, seed=0)
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(groups)))  # every attempt once per epoch
        for b in batches:  # requests are never split across batches
            assert all(groups.count(groups[i]) == sum(groups[j] == groups[i] for j in b) for i in b)
    assert len({tuple(map(tuple, e)) for e in epochs}) > 1  # a new order each epoch


def test_refine_rule_values_at_all_thresholds_match_the_definition():
    from ade_train.critique.refine import RefineCase, RefineRule, _rule_values, rule_value

    rng = np.random.default_rng(0)
    cases = [
        RefineCase(f"r{i % 7}", float(rng.random()), float(rng.random()), float(rng.random()))
        for i in range(300)
    ]
    cases += [RefineCase("tie", 0.5, 1.0, 0.0), RefineCase("tie", 0.5, 0.0, 1.0)]  # equal confidences
    ts = np.unique(np.concatenate([[0.0, 0.5, 1.0], [c.confidence for c in cases]]))
    assert np.allclose(_rule_values(cases, ts), [rule_value(cases, float(t)) for t in ts])
    rule = RefineRule().fit(cases)
    assert rule_value(cases, rule.threshold_) == pytest.approx(max(rule.values_))


def test_the_refine_rule_can_be_fitted_on_the_fit_part_only():
    from ade_train.calibrate.decision import certify_mask

    cases = [RefineCase(f"r{i:03d}", 0.5, refined=0.5, fresh=0.5) for i in range(200) for _ in range(2)]
    kept = fit_part(cases, 0.7, seed=0)
    ids = sorted({c.record_id for c in cases})
    certify = {i for i, m in zip(ids, certify_mask(ids, 0.7, 0), strict=True) if m}
    assert kept and not {c.record_id for c in kept} & certify  # calibrate certifies on unseen requests
    assert {c.record_id for c in kept} | certify == set(ids) and 0.2 < len(kept) / len(cases) < 0.4
