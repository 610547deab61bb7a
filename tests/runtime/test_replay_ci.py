"""``ade-replay --ci``: paired intervals against Best-of-8 and the compute-quality curves, text and JSON."""

from __future__ import annotations

import json

from helpers import FIXTURES
from helpers.predictors import calibrator, card

from ade_runtime.cli.replay import main
from ade_runtime.offline.evaluate import evaluate
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records

FIXTURE = FIXTURES / "testbed_small"


def test_evaluate_with_ci_pairs_every_policy_with_the_reference_and_adds_curves():
    records, _ = load_records(FIXTURE, images="none")
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    out = evaluate(records, preds, ["single", "best_of_4", "best_of_8", "ade"], ci=0.9)
    ref = out["policies"]["best_of_8"]["vs_best_of_8"]
    assert ref["diff"] == 0.0 and ref["n"] == len(records) and ref["small_sample"]
    single = out["policies"]["single"]["vs_best_of_8"]
    assert single["lo"] <= single["diff"] <= single["hi"] and single["level"] == 0.9
    curves = out["curves"]
    assert curves["level"] == 0.9 and {p["curve"] for p in curves["points"]} >= {"ade", "confidence_stop"}
    assert all("vs_reference" in p for p in curves["points"])
    assert "curves" not in evaluate(records, preds, ["single"])  # only when asked


def test_evaluate_pairs_with_another_reference_on_request():
    records, _ = load_records(FIXTURE, images="none")
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    out = evaluate(records, preds, ["best_of_2", "best_of_8", "ade"], ci=0.9, pair_with=("best_of_2",))
    pol = out["policies"]
    assert pol["best_of_2"]["vs_best_of_2"]["diff"] == 0.0
    want = pol["ade"]["mean_score"] - pol["best_of_2"]["mean_score"]
    assert abs(pol["ade"]["vs_best_of_2"]["diff"] - want) < 1e-9  # paired on the same requests
    assert "vs_best_of_2" not in evaluate(records, preds, ["best_of_2", "ade"], ci=0.9)["policies"]["ade"]


def test_cli_prints_intervals_and_curves(tmp_path, capsys, monkeypatch):
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    monkeypatch.setattr("ade_runtime.cli.replay.load_predictors", lambda args, prog: preds)
    code = main(["--traces", str(FIXTURE), "--predictors", str(tmp_path), "--ci", "--json",
                 "--policies", "single,best_of_8,ade"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "score - Best-of-8 [90% paired CI]" in text and "best_of_N by judge" in text
    assert "small sample" in text
    result = json.loads(text.strip().splitlines()[-1])
    assert result["policies"]["ade"]["vs_best_of_8"]["verdict"] in ("win", "loss", "level")
    assert result["curves"]["points"]
    assert main(["--traces", str(FIXTURE), "--predictors", str(tmp_path), "--ci", "1.5"]) == 2


def test_cli_applies_a_deadline_and_checks_it(tmp_path, capsys, monkeypatch, tiny_predictors):
    monkeypatch.setattr("ade_runtime.cli.replay.load_predictors", lambda args, prog: tiny_predictors)
    base = ["--traces", str(FIXTURE), "--predictors", str(tmp_path), "--policies", "best_of_4", "--json"]
    assert main(base) == 0
    free = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["policies"]["best_of_4"]
    assert main([*base, "--max-seconds", "10"]) == 0
    capped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["policies"]["best_of_4"]
    assert capped["gpu_seconds_per_request"] < free["gpu_seconds_per_request"]
    assert main([*base, "--max-seconds", "-1"]) == 2
