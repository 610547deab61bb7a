"""The new-domain bench: the split of a user's traces loses nothing, is stable, refuses another dataset;
its verdicts follow the figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ade_runtime.errors import InputError
from ade_runtime.traces import load_records
from ade_train.bench.domain import held_out_ids, render, split_dataset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "testbed_small"


def test_split_writes_two_datasets_that_partition_the_requests_with_their_images(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    (data / "traces-00000.jsonl").open("ab").write(b"this line is not a record\n")
    info = split_dataset(data, tmp_path / "work", fraction=0.25, seed=0)
    all_recs, _ = load_records(data, images="none")
    train, train_rej = load_records(tmp_path / "work" / "split" / "train", images="header")
    held, held_rej = load_records(tmp_path / "work" / "split" / "held-out", images="header")
    ids_train, ids_held = {r.id for r in train}, {r.id for r in held}
    assert not ids_train & ids_held and ids_train | ids_held == {r.id for r in all_recs}
    assert info["held_out_requests"] == len(ids_held) and 0 < len(ids_held) < len(all_recs) / 2
    assert len(train_rej) == 1 and held_rej == []  # the bad line is kept where make train reports it
    assert info["rejected"] == 1


def test_split_is_reused_and_another_dataset_in_the_same_work_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    first = split_dataset(data, tmp_path / "work")
    assert split_dataset(data, tmp_path / "work") == first
    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    lines = (other / "traces-00000.jsonl").read_text().splitlines(keepends=True)
    (other / "traces-00000.jsonl").write_text("".join(lines[:-3]))
    with pytest.raises(InputError, match="split.json.*another --work"):
        split_dataset(other, tmp_path / "work")


def test_held_out_ids_are_drawn_within_each_category():
    class R:
        def __init__(self, i, c):
            self.id, self.category = f"r{i}", c

    recs = [R(i, "color" if i % 4 else "action") for i in range(400)]
    held = held_out_ids(recs, 0.25, seed=3)
    assert held == held_out_ids(recs, 0.25, seed=3) and held != held_out_ids(recs, 0.25, seed=4)
    assert sum(r.id in held for r in recs if r.category == "action") == 25
    assert sum(r.id in held for r in recs if r.category == "color") == 75
    with pytest.raises(InputError, match="--held-out"):
        held_out_ids(recs, 1.0, seed=0)


def _ci(d, lo, hi):
    return {"diff": d, "lo": lo, "hi": hi, "n": 400}


def _fig(status="certified", share=0.4, diff=-0.01, head=0.85, trees=0.84):
    pol = {}
    for name, m, s in (("best_of_1", 0.7, 0.125), ("best_of_8", 0.88, 1.0), ("ade", 0.88 + diff, share)):
        pol[name] = {"mean_score": m, "nfe_share_of_best_of_8": s, "gpu_share_of_best_of_8": s,
                     "verifier_calls_per_request": 8 * s, "vs_best_of_8": _ci(m - 0.88, m - 0.9, m - 0.86)}  # fmt: skip
    pol["oracle"] = {"error": "needs judge labels"}
    return {
        "data": "data/world-b",
        "split": {"train_requests": 1500, "held_out_requests": 500},
        "training": {"wall_s": 600.0, "steps": {"card": 100.0}},
        "certificate": {"status": status, "claim": ">= reference mean score - 0.03 at delta = 0.1",
                        "target": 0.03, "risk": "margin", "requested_target": 0.02,
                        "requested_n_needed": 1400, "n_certify": 420, "n_fit": 180,
                        "reference": "best_of_8", "reference_chosen_from": {"best_of_8": 0.9}},
        "critique": {"head": {"within_auroc": head}, "trees": {"within_auroc": trees}},
        "replay": {"requests": 500, "rejected": 0, "policies": pol},
    }  # fmt: skip


def test_domain_targets_met_when_the_figures_meet_them():
    md, targets, misses = render(_fig())
    text = "\n".join(md)
    assert "1500 requests to train on" in text and "epsilon = 0.02 was asked" in text
    assert "| `oracle` | needs judge labels" in text  # a policy that could not run is shown, not dropped
    assert not any("upper bound" in line for line in md if line.startswith("| `"))
    assert len(targets) == 4 and all(t["met"] for t in targets) and misses == []


def test_a_row_that_follows_judge_written_refinements_says_it_is_an_upper_bound():
    fig = _fig()
    pol = fig["replay"]["policies"]
    pol["card_only"] = {**pol["ade"], "refinement_upper_bound": True}
    rows = [line for line in render(fig)[0] if line.startswith("| `")]
    assert [r for r in rows if "upper bound" in r] == [r for r in rows if r.startswith("| `card_only`")]


def test_domain_misses_are_reported():
    _, targets, misses = render(_fig(status="conservative", share=1.0, diff=-0.05, head=0.80, trees=0.85))
    assert not any(t["met"] for t in targets) and len(misses) == 4
    assert any("conservative" in m for m in misses) and any("100%" in m for m in misses)


def test_rows_that_refine_on_judge_written_traces_are_marked_and_the_oracles_left_alone():
    from ade_runtime.policy import PolicyConfig
    from ade_train.bench.domain import POLICIES, mark_upper_bounds

    rows = {name: {} for name in ("ade", *POLICIES)}
    mark_upper_bounds(rows, PolicyConfig(refine=False, s_max=3), judge_written=True)
    marked = {name for name, row in rows.items() if row.get("refinement_upper_bound")}
    assert marked == {"confidence_stop", "card_only"}  # the chains; the export samples afresh
    mark_upper_bounds(rows, PolicyConfig(refine=False, s_max=1), judge_written=True)
    assert not any(row.get("refinement_upper_bound") for row in rows.values())  # S_max 1: no chains
    assert "refinement_upper_bound" not in rows["oracle"]
    mark_upper_bounds(rows, None, judge_written=False)  # logged prompts: nothing is an upper bound
    assert not any(row.get("refinement_upper_bound") for row in rows.values())


def test_training_time_is_reported_when_run_reused_or_unknown_and_an_unreachable_margin_is_said():
    fig = _fig()
    assert "took 10.0 min (card 100 s)" in "\n".join(render(fig)[0])
    fig["training"] = {"wall_s": 0.5, "steps": {}, "measured_steps": {"card": 60.0, "calibrate": 120.0}}
    assert "was reused; it took 3.0 min when it ran (card 60 s, calibrate 120 s)" in "\n".join(render(fig)[0])
    fig["training"] = {"wall_s": 0.5, "steps": {}}
    fig["certificate"]["requested_n_needed"] = None
    text = "\n".join(render(fig)[0])
    assert (
        "its time was not recorded" in text
        and "epsilon = 0.02 is out of reach" in text
        and "None" not in text
    )


def test_ensure_trained_keeps_each_steps_time_for_a_rerun(tmp_path, monkeypatch):
    from ade_train.bench import run as bench_run

    out = tmp_path / "model"

    def fake_run(cmd):
        step = cmd[1]
        (out / "export").mkdir(parents=True, exist_ok=True)
        name = {"calibrate": "calibration"}.get(step, step)
        (out / "export" / f"{name}.json").write_text("{}")

    monkeypatch.setattr(bench_run, "_run", fake_run)
    first = bench_run.ensure_trained(tmp_path / "data", out)
    assert set(first["steps"]) == {"card", "critique", "calibrate"}
    again = bench_run.ensure_trained(tmp_path / "data", out)
    assert again["steps"] == {} and again["measured_steps"] == first["steps"]
