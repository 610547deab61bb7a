"""Calibration never credits judge-written refinement prompts (an oracle the live loop lacks).

The testbed generator refines with the exact judge's flaws. Replaying such a chain scores what a perfect
critique could buy, not what ADE's critique does: on the testbed the export of a search that credited it
replayed level with Best-of-8 and scored 0.10 below it live on the same requests. Records say who wrote
their refinement prompts (``meta.refinement_feedback``); calibration searches refinement only on logged
prompts.
"""

from __future__ import annotations

import json
import shutil

from helpers.calibration import GRID, RELATIVE, write_dataset

from ade_runtime.offline import oracle_refinements, refinement_feedback
from ade_runtime.traces import Attempt, Cost, EditRecord
from ade_train.calibrate import CalibrateConfig, PolicyCalibrator, calibration_split, train


def _record(meta, rounds=2):
    attempts = [
        Attempt(candidate=0, round=r, reasoning_tokens=0, prompt="p", cost=Cost(nfe=1), image=None, scores={})
        for r in range(rounds)
    ]
    return EditRecord("r", "i", "s.png", "b", attempts, meta=meta)


def test_who_wrote_the_refinement_prompts_is_read_from_the_record():
    assert refinement_feedback(_record({"refinement_feedback": "judge"})) == "judge"
    assert refinement_feedback(_record({"testbed": True})) == "judge"  # older testbed traces did not say
    assert refinement_feedback(_record({"testbed": True, "refinement_feedback": "critique"})) == "critique"
    assert refinement_feedback(_record({})) == "logged"  # a deployment's own logs: what it sent
    assert oracle_refinements([_record({"testbed": True})]) == ["r"]
    assert oracle_refinements([_record({"testbed": True}, rounds=1)]) == []  # no refinement round to credit
    assert oracle_refinements([_record({"ade": {"collect": True}})]) == []


def _mark_judge_written(src, dst):
    """A copy of the traces, their refinement rounds declared judge-written (as the testbed generator does)."""
    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("*.jsonl")):
        lines = [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
        for rec in lines:
            rec["meta"] = {**rec.get("meta", {}), "refinement_feedback": "judge"}
        shard.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return dst


def test_judge_written_refinements_are_not_searched_and_logged_ones_are(tmp_path):
    logged = write_dataset(tmp_path / "logged", n=120, seed=4)
    judged = _mark_judge_written(logged, tmp_path / "judged")
    results = {}
    for name, data in (("logged", logged), ("judged", judged)):
        out = tmp_path / f"out-{name}"
        cfg = CalibrateConfig(
            **RELATIVE, data=str(data), out=str(out), grid=GRID, wandb=False, target_fraction=0.5,
            allow_uncertified=True, min_requests=5,
        )  # fmt: skip
        split = calibration_split(data, out)
        cal = PolicyCalibrator(cfg).fit(split.records)
        results[name] = cal
    logged_cal, judged_cal = results["logged"], results["judged"]
    # logged prompts: refinement chains are part of the search (s_max 1 and 3, both tau_low values)
    assert logged_cal.base_.refine
    assert {c.s_max for c in logged_cal.search_.configs} == {1, 3}
    assert {c.tau_low for c in logged_cal.search_.configs} == {0.0, 0.2}
    # judge-written: fresh samples only, no duplicate settings, and the report says why
    assert not judged_cal.base_.refine and not judged_cal.policy_.refine
    assert all(not c.refine for c in judged_cal.search_.configs)
    assert {(c.s_max, c.tau_low) for c in judged_cal.search_.configs} == {(1, 0.0)}
    assert any("judge-written" in n for n in judged_cal.notes_)
    assert not any("judge-written" in n for n in logged_cal.notes_)


def test_the_exported_policy_of_a_testbed_run_does_not_refine(tmp_path):
    data = _mark_judge_written(write_dataset(tmp_path / "logged", n=120, seed=5), tmp_path / "judged")
    out = tmp_path / "out"
    cfg = CalibrateConfig(
        **RELATIVE, data=str(data), out=str(out), grid=GRID, wandb=False, target_fraction=0.5,
        allow_uncertified=True, min_requests=5,
    )  # fmt: skip
    train(cfg)
    policy = json.loads((out / "export" / "calibration.json").read_text())["config"]["policy"]
    assert policy["refine"] is False
    report = json.loads((out / "calibration_report.json").read_text())
    assert "judge-written" in json.dumps(report)


def test_without_refinement_fixed_budgets_are_searched_beside_card():
    from ade_runtime.policy import PolicyConfig
    from ade_train.calibrate.search import SearchGrid

    grid = SearchGrid(
        tau_high=[0.9], tau_low=[0.0, 0.2], s_max=[1, 3], card_quantile=[0.5, 0.9], card_cap=[None, 8]
    )
    levels = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    chains = grid.configs(PolicyConfig(max_candidates=8), use_card=True, use_prune=False, levels=levels)
    # tau_low x s_max x quantile x hopeless budget
    assert all(c.use_card for c in chains) and len(chains) == 2 * 2 * 2 * 2
    fresh = grid.configs(
        PolicyConfig(max_candidates=8, refine=False), use_card=True, use_prune=False, levels=levels
    )
    assert sorted(c.card_quantile for c in fresh if c.use_card) == [0.5, 0.5, 0.9, 0.9]
    # CARD's hopeless requests either get the artifact's give-up budget or the cap
    assert {c.card_cap for c in fresh if c.use_card} == {None, 8}
    assert {c.card_cap for c in fresh if not c.use_card} == {None}
    # CARD's labels count attempts of chains: fixed budgets beside it, none above max_candidates
    assert sorted(c.default_budget for c in fresh if not c.use_card) == [1, 2, 3, 4, 6, 8]
    assert {(c.tau_low, c.s_max) for c in fresh} == {(0.0, 1)}
