"""``ade-train calibrate`` end to end on a small judged trace dataset written in code, with a tiny CARD."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES
from helpers.calibration import (
    GRID,
    N_REQUESTS,
    RELATIVE,
    export_tiny_card,
    export_tiny_critique,
    write_dataset,
)
from PIL import Image

from ade_runtime.offline import Overhead, replay_policy, summarize
from ade_runtime.offline.signals import AttemptSignals
from ade_runtime.predictors.calibration import Calibrator
from ade_runtime.predictors.card import CardPredictor
from ade_runtime.traces import load_records
from ade_train.calibrate import CalibrateConfig, calibration_split, cli_main, load_config, train
from ade_train.export import read_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("traces"))


@pytest.fixture(scope="module")
def calibrated(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    export_tiny_card(out)
    # allow_uncertified: these tests pin the threshold search itself (the cheapest setting meeting the
    # target on the calibration requests); the certified default is tested below
    cfg = CalibrateConfig(
        **RELATIVE,
        data=str(dataset),
        out=str(out),
        grid={**GRID, "prune_threshold": [None, 0.2]},
        wandb=False,
        allow_uncertified=True,
    )
    return cfg, train(cfg)


def test_chosen_policy_meets_the_target_on_the_split_it_was_chosen_on(calibrated, dataset):
    cfg, metrics = calibrated
    out = metrics["export_dir"]
    cal = Calibrator.from_pretrained(out)
    card = CardPredictor.from_pretrained(out)
    policy = cal.policy
    records = calibration_split(dataset, Path(cfg.out)).records

    def signals(rec):
        conf = {a.key: cal.predict_proba(a.scores) for a in rec.attempts}
        prev = {
            a.key: cal.predict_proba(
                {"clip_t": a.scores["preview_clip_t"], "clip_i": a.scores["preview_clip_i"]}
            )
            for a in rec.attempts
        }
        return AttemptSignals(conf, prev)

    def budget(rec):
        b = card.predict(rec.instruction, rec.resolve(rec.source_image))
        return b.quantile(policy.card_quantile, policy.card_cap), b.reasoning_tokens

    overhead = Overhead(score_s=cfg.score_s, preview_s=cfg.preview_s)
    ours = summarize(replay_policy(records, "ade", policy, signals, budget, overhead))
    ref = summarize(replay_policy(records, "best_of_8", policy, signals, None, overhead))
    assert metrics["feasible"] is True
    assert ours["mean_score"] >= cfg.target_fraction * ref["mean_score"] - 1e-12
    assert ours["mean_score"] == pytest.approx(metrics["mean_score"], abs=1e-12)
    assert ours["gpu_seconds_per_request"] == pytest.approx(metrics["compute"], abs=1e-9)
    assert metrics["compute"] <= ref["gpu_seconds_per_request"] + 1e-9
    assert metrics["n_requests"] == len(records)


def test_alternatives_table_lists_every_candidate_and_the_cheapest_feasible_is_chosen(calibrated):
    cfg, metrics = calibrated
    out = Path(cfg.out)
    rows = list(csv.DictReader((out / "calibration_candidates.csv").open()))
    as_json = json.loads((out / "calibration_candidates.json").read_text())
    valid = sum(1 for th in GRID["tau_high"] for tl in GRID["tau_low"] if tl <= th)
    caps = len(cfg.search_grid.card_cap)  # CARD on its own, or within a fixed budget
    assert caps == 4
    # x s_max x card_quantile x card_cap x prune_threshold
    assert len(rows) == len(as_json) == valid * 2 * 2 * caps * 2
    chosen = [r for r in as_json if r["chosen"]]
    assert len(chosen) == 1
    feasible = [r for r in as_json if r["feasible"]]
    assert chosen[0]["compute"] == min(r["compute"] for r in feasible)
    assert all(r["mean_score"] >= metrics["target_score"] - 1e-12 for r in feasible)
    assert {
        "tau_high",
        "tau_low",
        "s_max",
        "card_quantile",
        "prune_threshold",
        "mean_score",
        "compute",
    } <= set(rows[0])
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["chosen_policy"]["tau_high"] == chosen[0]["tau_high"]
    assert (
        "isotonic overfits" in report["method"]["primary"]["reason"]
        or report["method"]["primary"]["method"] != "logistic"
    )


def test_small_split_warns_with_n_and_margin(calibrated):
    _, metrics = calibrated
    assert metrics["n_requests"] < 100
    warning = " ".join(metrics["warnings"])
    assert f"n={metrics['n_requests']}" in warning and "+-" in warning


def test_plots_and_export_exist(calibrated):
    cfg, metrics = calibrated
    out = Path(cfg.out)
    for name in ("calibration_reliability.png", "calibration_compute_quality.png"):
        data = (out / "plots" / name).read_bytes()  # every job's plots under OUT/plots
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        with Image.open(out / "plots" / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    export = out / "export"
    names = sorted(p.name for p in export.iterdir())
    assert names == sorted(
        [
            "README.md",
            "export.json",
            "card.json",
            "card.safetensors",
            "calibration.json",
            "calibration.safetensors",
        ]
    )
    manifest = read_manifest(export)
    assert set(manifest["predictors"]) == {"card", "calibration"}
    assert "tau_high" in manifest["predictors"]["calibration"]["intended_use"]
    assert "Calibrated confidence" in (export / "README.md").read_text()
    assert 0.0 <= metrics["ece_after"] <= 1.0 and 0.0 <= metrics["ece_before"] <= 1.0


def test_without_card_or_previews_the_quantile_and_pruning_are_not_searched(tmp_path):
    data = write_dataset(tmp_path / "traces", n=60, seed=1, previews=False)
    cfg = CalibrateConfig(
        **RELATIVE, data=str(data), out=str(tmp_path / "out"), grid=GRID, wandb=False, min_requests=5
    )
    metrics = train(cfg)
    notes = " ".join(metrics["notes"])
    assert "no CARD" in notes and "no preview scores" in notes and "no critique" in notes
    rows = json.loads((tmp_path / "out" / "calibration_candidates.json").read_text())
    assert {r["card_quantile"] for r in rows} == {0.8} and {r["prune_threshold"] for r in rows} == {None}
    # without CARD the fixed attempt budget is searched over the levels the 4 x 3 grid offers
    assert sorted({r["default_budget"] for r in rows}) == [1, 2, 3, 4, 6, 8, 9, 12]
    assert metrics["default_budget"] in (1, 2, 3, 4, 6, 8, 9, 12)
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == [
        "README.md",
        "calibration.json",
        "calibration.safetensors",
        "export.json",
    ]


def test_cli_runs_from_a_yaml_config_and_reports_bad_input(tmp_path, dataset, capsys):
    config = tmp_path / "cal.yaml"
    config.write_text(
        yaml.safe_dump(
            {**RELATIVE, "grid": {**GRID, "s_max": [2]}, "min_requests": 5, "allow_uncertified": True}
        )
    )
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--config",
                str(config),
                "--no-wandb",
                "--target-fraction",
                "0.95",
            ]
        )
        == 0
    )
    assert "Calibration" in capsys.readouterr().out
    assert Calibrator.from_pretrained(out / "export").policy.s_max == 2
    assert cli_main(["--data", str(tmp_path / "nope"), "--out", str(out), "--no-wandb"]) == 2
    assert "not a directory" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"tau_hgh": [0.5]}))
    assert cli_main(["--data", str(dataset), "--out", str(out), "--config", str(config), "--no-wandb"]) == 2
    assert "unknown keys ['tau_hgh']" in capsys.readouterr().err


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="target_fraction"):
        CalibrateConfig(target_fraction=0.0)
    with pytest.raises(ValueError, match="methods"):
        CalibrateConfig(methods=["platt"])
    with pytest.raises(ValueError, match="grid: unknown keys"):
        CalibrateConfig(grid={"tau": [0.5]})
    with pytest.raises(ValueError, match="SearchGrid.tau_high"):
        CalibrateConfig(grid={"tau_high": [1.5]})
    assert load_config(None).grid["tau_high"]  # the shipped YAML parses


def test_the_defaults_live_in_the_packaged_yaml_and_the_grid_checks_are_policy_configs():
    from dataclasses import asdict, fields

    from ade_train.calibrate.config import packaged_defaults
    from ade_train.calibrate.search import SearchGrid

    yaml_cfg = packaged_defaults()
    names = {f.name for f in fields(CalibrateConfig)}
    assert names - set(yaml_cfg) == {"data", "out"} and set(yaml_cfg) - names == {"threads"}
    assert asdict(CalibrateConfig()) == asdict(load_config(None))
    assert CalibrateConfig().score_s == 0.05 and CalibrateConfig().critique_s == 0.03  # the YAML's values
    assert asdict(SearchGrid()) == asdict(SearchGrid(**yaml_cfg["grid"]))
    assert SearchGrid().verify_band == [None, (0.15, 0.85), (0.3, 0.7)]
    with pytest.raises(ValueError, match=r"SearchGrid.s_max .* PolicyConfig.s_max must be an int >= 1"):
        SearchGrid(s_max=[0])
    with pytest.raises(ValueError, match="SearchGrid.verify_band .* low <= high"):
        SearchGrid(verify_band=[(0.9, 0.1)])
    with pytest.raises(ValueError, match="SearchGrid.default_budget"):
        SearchGrid(default_budget=[0])


def test_cli_takes_dotted_overrides_threads_and_print_config(dataset, tmp_path, capsys):
    from ade_train.calibrate.config import build_config

    argv = ["--data", str(dataset), "--out", str(tmp_path), "--grid.s_max=[2]", "--score_s=0.1"]
    argv += ["--base_policy.max_candidates=4", "--threads", "1", "--target-fraction", "0.9", "--print-config"]
    assert cli_main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["grid"]["s_max"] == [2] and printed["grid"]["tau_high"] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert printed["score_s"] == 0.1 and printed["target_fraction"] == 0.9 and printed["threads"] == 1
    cfg = CalibrateConfig.from_run_config({k: v for k, v in build_config(argv).items()})
    assert cfg.policy_base.max_candidates == 4 and cfg.search_grid.s_max == [2] and cfg.data == str(dataset)
    assert cli_main(["--data", str(dataset), "--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err


def test_pinned_numbers_and_the_fitted_controller(dataset, tmp_path):
    """Fixed data and config -> the same thresholds, front, p-values and claim (pinned across refactors);
    ``PolicyCalibrator``'s fitted attributes are what the job exports."""
    from ade_train.calibrate import PolicyCalibrator

    out = tmp_path / "out"
    card = export_tiny_card(out)
    # the numbers were pinned at certify_fraction 0.5 and before the card_cap axis (one value: None)
    cfg = CalibrateConfig(**RELATIVE,
        data=str(dataset), out=str(out), grid={**GRID, "card_cap": [None]}, wandb=False,
        target_fraction=0.5, score_s=0.05, critique_s=0.03, preview_s=0.05, certify_fraction=0.5,
    )  # fmt: skip
    metrics = train(cfg)
    chosen = tuple(metrics[k] for k in ("tau_high", "tau_low", "s_max", "card_quantile", "prune_threshold"))
    assert chosen == (0.9, 0.0, 3, 0.5, None)
    assert metrics["certificate"] == "certified"
    assert metrics["certified_claim"] == ">= 0.5 x reference mean score at delta = 0.1"
    assert metrics["certificate_p_value"] == pytest.approx(0.08254295766228549, rel=1e-9)
    assert metrics["compute"] == pytest.approx(17.718750000000004, rel=1e-12)
    assert metrics["mean_score"] == pytest.approx(0.7977552576966223, rel=1e-12)
    assert metrics["heldout_slack"] == pytest.approx(0.4661147869674877, rel=1e-9)
    cert = json.loads((out / "calibration_report.json").read_text())["certificate"]["certificate"]
    assert cert["order"] == [72, 40, 10, 11, 6, 4] and cert["certified"] == [72]
    p = [0.08254295766228549, 0.11394958027940039, 0.14048487600901008, 0.14048487600901008]
    assert cert["p_values"] == pytest.approx([*p, 0.26543706648581167, 0.26543706648581167], rel=1e-9)

    split = calibration_split(dataset, out)
    cal = PolicyCalibrator(cfg).fit(split.records, card=card, test_records=split.test_records)
    assert cal.front_ == cert["order"] and cal.p_values_ == pytest.approx(cert["p_values"], rel=1e-12)
    assert cal.claim_ == metrics["certified_claim"] and cal.decision_.index == 72
    assert cal.policy_ == Calibrator.from_pretrained(out / "export").policy == cal.calibrator_.policy
    assert cal.heldout_["diff"] == pytest.approx(metrics["heldout_slack"], rel=1e-12)


def test_the_dataset_is_valid_v1(dataset):
    records, rejects = load_records(dataset, images="header")
    assert len(records) == N_REQUESTS and rejects == []


def test_with_a_critique_it_is_a_feature_and_the_cheap_scores_are_the_fallback(tmp_path):
    data = write_dataset(tmp_path / "traces", n=80, seed=2, previews=False, images=True)
    out = tmp_path / "out"
    critique = export_tiny_critique(out)
    cfg = CalibrateConfig(
        **RELATIVE,
        data=str(data),
        out=str(out),
        grid={**GRID, "s_max": [1]},
        wandb=False,
        min_requests=5,
        critique_s=0.5,
    )
    metrics = train(cfg)
    cal = Calibrator.from_pretrained(out / "export")
    assert cal.feature_names == ["clip_i", "clip_t", "critique"]
    assert cal.config.fallback_feature_names == ("clip_i", "clip_t")
    assert "critique missing for" in " ".join(metrics["notes"])
    # Best-of-8 on this 4-candidate grid looks at 4 attempts, each paying scores and the critique.
    assert metrics["reference_compute"] == pytest.approx(4 * (4.0 + cfg.score_s + cfg.critique_s))
    rec = calibration_split(data, out).records[0]
    with_image = next(a for a in rec.attempts if a.image)
    p = critique.predict(
        *(Image.open(rec.resolve(x)).convert("RGB") for x in (rec.source_image, with_image.image)),
        rec.instruction,
    ).p_pass
    both = cal.predict_proba({**with_image.scores, "critique": p})
    cheap = cal.predict_proba(with_image.scores)
    assert cal.uses_fallback({**with_image.scores, "critique": p}) == "primary" and both != cheap
    assert json.loads((out / "calibration_report.json").read_text())["features"]["fallback"] == [
        "clip_i",
        "clip_t",
    ]


def test_offline_wandb_run_holds_the_metrics_and_the_plots(tmp_path, dataset, monkeypatch):
    from ade_train.tracking import read_run_metrics

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    cfg = CalibrateConfig(
        **RELATIVE, data=str(dataset), out=str(out), grid={**GRID, "s_max": [1], "card_quantile": [0.9]}
    )
    metrics = train(cfg)
    run = Path(metrics["wandb_run_dir"])
    assert run.name.startswith("offline-run-") and run.is_relative_to(out)
    got = read_run_metrics(run, wait_s=0)  # the job's finish() waited for the exit record
    assert got["complete"]
    history = got["history"]
    logged = next(row for row in history if "calibration/ece_after" in row)
    assert logged["calibration/ece_after"] == pytest.approx(metrics["ece_after"])
    assert logged["calibration/tau_high"] == metrics["tau_high"]
    assert len(list((run / "files" / "media" / "images").rglob("*.png"))) == 2


FIXTURE = FIXTURES / "testbed_small"


@pytest.mark.skipif(not (FIXTURE / ".complete").exists(), reason="testbed fixture not generated")
def test_on_the_testbed_fixture_the_choice_meets_the_target_and_the_table_is_written(tmp_path):
    grid = {
        "tau_high": [0.6, 0.9, 0.99],
        "tau_low": [0.0, 0.2],
        "s_max": [1, 3],
        "prune_threshold": [None, 0.1],
    }
    # per-attempt samples make Best-of-8 strong on the fixture, and its judge-written refinements are not
    # searched (fresh samples only): 0.95 x is reached with a strict tau_high
    cfg = CalibrateConfig(
        **RELATIVE, data=str(FIXTURE), out=str(tmp_path), grid=grid, wandb=False, allow_uncertified=True,
        target_fraction=0.95,
    )  # fmt: skip
    metrics = train(cfg)
    rows = json.loads((tmp_path / "calibration_candidates.json").read_text())
    chosen = next(r for r in rows if r["chosen"])
    assert metrics["feasible"] and chosen["mean_score"] >= metrics["target_score"] - 1e-12
    assert chosen["compute"] == min(r["compute"] for r in rows if r["feasible"])
    assert (tmp_path / "calibration_candidates.csv").read_text().count("\n") == len(rows) + 1
    assert any("n=" in w for w in metrics["warnings"])  # a 40-request fixture cannot support a guarantee
