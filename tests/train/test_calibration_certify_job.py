"""``ade-train calibrate``'s certificate end to end: the reference export when nothing certifies, the cheapest
certified setting, the absolute form, the default margin claim against the best Best-of-N and ``--plan``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers.calibration import GRID, N_REQUESTS, RELATIVE, export_tiny_card, write_dataset

from ade_runtime.predictors.calibration import Calibrator
from ade_train.calibrate import CalibrateConfig, cli_main, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("traces"))


# -- certification (Learn-then-Test over the Pareto front) -------------------------------------------


def test_by_default_an_uncertifiable_target_exports_the_reference_policy_and_says_why(tmp_path, dataset):
    out = tmp_path / "out"
    export_tiny_card(out)
    cfg = CalibrateConfig(
        **RELATIVE, data=str(dataset), out=str(out), grid=GRID, wandb=False, target_fraction=1.2
    )
    metrics = train(cfg)
    assert metrics["certificate"] == "conservative"
    policy = Calibrator.from_pretrained(out / "export").policy
    assert (policy.default_budget, policy.s_max, policy.use_card, policy.early_stop) == (8, 1, False, False)
    text = " ".join(metrics["warnings"])
    assert "NOT certified" in text and "conservative policy" in text and "--allow-uncertified" in text
    report = json.loads((out / "calibration_report.json").read_text())
    cert = report["certificate"]["certificate"]
    assert cert["certified_any"] is False and cert["spec"]["target"] == 1.2 and cert["order"]
    assert cert["n_select"] + cert["n_certify"] == metrics["n_requests"]
    assert "NOT certified" in (out / "export" / "README.md").read_text()
    assert not any(r["chosen"] for r in json.loads((out / "calibration_candidates.json").read_text()))


def test_a_certifiable_target_exports_the_cheapest_certified_setting(tmp_path, dataset):
    out = tmp_path / "out"
    export_tiny_card(out)
    cfg = CalibrateConfig(
        **RELATIVE, data=str(dataset), out=str(out), grid=GRID, wandb=False, target_fraction=0.5
    )
    metrics = train(cfg)
    assert metrics["certificate"] == "certified"
    assert metrics["certificate_p_value"] <= cfg.delta
    report = json.loads((out / "calibration_report.json").read_text())
    cert = report["certificate"]["certificate"]
    rows = json.loads((out / "calibration_candidates.json").read_text())
    chosen = [i for i, r in enumerate(rows) if r["chosen"]]
    assert chosen == [cert["chosen"]] and rows[chosen[0]]["certified"]
    assert cert["chosen"] == cert["certified"][-1]  # the cheapest of the certified prefix of the front
    # split discipline: the map was fitted on the fit part only, the certify part is disjoint
    assert cert["n_select"] + cert["n_certify"] == metrics["n_requests"] and cert["n_certify"] > 0
    ids = report["certificate"]["ids"]
    fit, certify_part, test = set(ids["fit"]), set(ids["certify"]), set(ids["test"])
    assert set(ids["map_fit"]) <= fit and not fit & certify_part and not (fit | certify_part) & test
    assert len(certify_part) == cert["n_certify"] and len(fit) == cert["n_select"] and test
    # the held-out paired slack comes from the test split, which no choice saw
    held = report["certificate"]["heldout"]
    assert held["split"] == "test" and held["n"] > 0 and held["lo"] <= held["diff"] <= held["hi"]
    assert "certified" in (out / "export" / "README.md").read_text()
    # the same data, certified at other targets: the "ADE across targets" curve of the bench
    curve = report["certificate"]["by_target"]
    assert [r["target"] for r in curve] == [0.9, 0.95, 0.98, 1.0, 1.02]
    passes = [r["passes"] for r in curve]
    assert passes == sorted(passes, reverse=True)  # a lower target is never harder to pass
    assert [r["certificate"] for r in curve] == [False, False, False, False, False]  # 0.5 was declared


def test_the_absolute_form_certifies_a_pass_rate(tmp_path, dataset):
    out = tmp_path / "out"
    cfg = CalibrateConfig(
        reference_policy="best_of_8",
        data=str(dataset),
        out=str(out),
        grid=GRID,
        wandb=False,
        risk="absolute",
        pass_rate=0.3,
        split="all",  # 80 certification requests (the default split leaves 9: too few to certify anything)
    )
    metrics = train(cfg)
    assert metrics["certified_claim"].startswith("pass rate >= 0.3")
    assert metrics["certificate"] == "certified"  # the data supports it: most attempts pass
    with pytest.raises(ValueError, match="pass-rate"):
        CalibrateConfig(risk="absolute")
    with pytest.raises(ValueError, match="delta"):
        CalibrateConfig(delta=1.5)


def test_the_default_claim_is_a_margin_against_the_best_best_of_n_chosen_on_the_fit_part(tmp_path, dataset):
    out = tmp_path / "out"
    export_tiny_card(out)
    # the grid of this check holds CARD on its own (card_cap None): the claim's form is what it pins
    grid = {**GRID, "card_cap": [None]}
    metrics = train(CalibrateConfig(data=str(dataset), out=str(out), grid=grid, wandb=False, split="all"))
    report = json.loads((out / "calibration_report.json").read_text())
    ref = report["reference"]
    assert set(ref["chosen_from"]) == {"best_of_1", "best_of_2", "best_of_4"}  # 4 candidates logged
    assert ref["policy"] == max(ref["chosen_from"], key=lambda k: (ref["chosen_from"][k], -int(k[8:])))
    assert metrics["certified_claim"] == ">= reference mean score - 0.02 at delta = 0.1"
    assert metrics["risk"] == "margin" and metrics["margin"] == 0.02
    assert metrics["certificate_power_planned"] is not None
    # the export states its own claim, for the model card and every served trace
    claim = Calibrator.from_pretrained(out / "export").config.claim
    assert claim["risk"] == "margin" and claim["target"] == 0.02 and claim["reference"] == ref["policy"]
    assert claim["status"] == metrics["certificate"] and claim["n_certify"] == metrics["n_certify"]
    assert "0.02" in (out / "export" / "README.md").read_text()


def test_plan_prints_the_power_from_the_fit_part_and_exports_nothing(tmp_path, dataset, capsys):
    out = tmp_path / "out"
    export_tiny_card(out)
    argv = ["--data", str(dataset), "--out", str(out), "--no-wandb", "--plan", "--split", "all"]
    assert cli_main([*argv, "--grid.tau_high=[0.5,0.9]", "--grid.tau_low=[0.0]"]) == 0
    printed = capsys.readouterr().out
    assert "Power analysis" in printed and "P(certified)" in printed and "80% power" in printed
    plan = json.loads((out / "calibration_plan.json").read_text())
    assert plan["n_fit"] + plan["n_certify"] == N_REQUESTS and plan["reference"].startswith("best_of_")
    powers = [r["power"] for r in plan["rows"]]
    assert all(0.0 <= p <= 1.0 for p in powers) and powers[-1] >= powers[0]
    assert not (out / "export" / "calibration.json").exists()  # a plan certifies and exports nothing


def test_a_margin_the_data_cannot_carry_is_widened_on_the_fit_part_and_the_card_says_so(tmp_path):
    """73 certification requests cannot certify a margin of 0 with good power: the fit part's plan declares
    the smallest margin that it can, which is certified, and the claim names what was asked and its cost."""
    data = write_dataset(tmp_path / "traces", n=100, seed=5)
    out = tmp_path / "out"
    export_tiny_card(out)
    cfg = CalibrateConfig(
        data=str(data), out=str(out), grid=GRID, wandb=False, split="all", margin=0.0, max_margin=0.1
    )
    metrics = train(cfg)
    assert metrics["requested_margin"] == 0.0 and metrics["requested_margin_power_planned"] < 0.8
    assert 0.0 < metrics["margin"] <= 0.1 and metrics["certificate"] == "certified"
    assert metrics["certified_claim"] == f">= reference mean score - {metrics['margin']:.3g} at delta = 0.1"
    need = metrics["requested_margin_n_needed"]
    assert need > metrics["n_certify"]
    claim = Calibrator.from_pretrained(out / "export").config.claim
    assert claim["target"] == metrics["margin"] and claim["requested_target"] == 0.0
    card = (out / "export" / "README.md").read_text()
    assert f"certified epsilon = {metrics['margin']:.3g} on {metrics['n_certify']} requests" in card
    assert f"epsilon = 0 needs about {need - metrics['n_certify']} more" in card
    # max_margin equal to the margin: the asked margin is tested as it is
    out2 = tmp_path / "out2"
    export_tiny_card(out2)
    strict = train(replace(cfg, out=str(out2), max_margin=0.0))
    assert strict["margin"] == 0.0 and strict["requested_margin"] is None
