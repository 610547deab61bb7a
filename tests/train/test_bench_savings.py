"""The savings bench part's verdicts: its targets follow the figures (a miss is reported, not hidden)."""

from __future__ import annotations

from ade_train.bench.savings import render


def _ci(diff, lo, hi):
    return {"diff": diff, "lo": lo, "hi": hi, "n": 500}


def _fig(
    ade_share=0.2, lo=-0.005, status="certified", wrong=0.02, step_hi=0.01, calls=2.0, target=0.02, asked=None
):
    row = lambda m, share, calls: {  # noqa: E731
        "mean_score": m, "gpu_seconds_per_request": 72 * share, "nfe_per_request": 1200 * share,
        "verifier_calls_per_request": calls, "vs_reference": _ci(m - 0.85, m - 0.86 + lo, m - 0.84),
        "vs_best_of_8": _ci(m - 0.85, m - 0.86, m - 0.84), "gpu_share_of_best_of_8": share,
        "verifier_share_of_best_of_8": calls / 8,
    }  # fmt: skip
    policies = {"ade": row(0.85, ade_share, calls)}
    for k, m in ((1, 0.7), (2, 0.78), (4, 0.82), (8, 0.85)):
        policies[f"best_of_{k}"] = row(m, k / 8, float(k))
    policies["ade"]["vs_reference"] = _ci(0.0, lo, 0.01)
    steps = {"2-1": _ci(0.08, 0.06, 0.1), "4-2": _ci(0.04, 0.02, 0.06), "8-4": _ci(0.0, -0.02, step_hi)}
    return {
        "certificate": {"status": status, "claim": f">= reference mean score - {target:g} at delta = 0.1",
                        "target": target, "requested_target": asked, "requested_n_needed": 1500,
                        "n_certify": 829, "n_fit": 355, "power_planned": 0.86,
                        "reference_chosen_from": {"best_of_8": 0.85}},
        "live": {"requests": 500, "world": "shifted", "policies": policies, "reference": "best_of_8",
                 "best_of_n_steps": steps},
        "coverage": {"claim": "c", "draws": 200, "n_calibration": 1184, "n_certify": 829, "n_pool": 500,
                     "n_settings": 10, "reference_chosen": {}, "n_disjoint": 500, "certified_share": 0.5,
                     "certified_and_wrong": wrong, "certified_and_wrong_disjoint": wrong, "delta": 0.1,
                     "mean_compute_share": 0.6},
    }  # fmt: skip


def test_every_target_is_met_when_the_figures_meet_it():
    md, targets, misses = render(_fig())
    assert md[0].startswith("## Savings by default") and len(targets) == 6
    assert all(t["met"] for t in targets) and misses == []


def test_each_miss_is_reported():
    _, targets, misses = render(
        _fig(ade_share=1.0, lo=-0.02, status="conservative", wrong=0.2, step_hi=-0.001, calls=8.0)
    )
    assert not any(t["met"] for t in targets) and len(misses) == 6  # every target named
    assert any("conservative" in m for m in misses) and any("100.0%" in m for m in misses)


def test_a_margin_widened_by_the_plan_is_said_and_misses_the_default_margin_target():
    md, targets, misses = render(_fig(target=0.03, asked=0.02))
    text = "\n".join(md)
    assert "epsilon = 0.02 was asked" in text and "declared epsilon = 0.03" in text and "about 1500" in text
    first = targets[0]
    assert not first["met"] and "0.02" in first["target"] and "epsilon = 0.03" in first["value"]
    assert len(misses) == 1


def test_the_part_renders_again_from_its_saved_figures_and_says_whether_the_export_refines(tmp_path):
    import json

    from ade_train.bench.parts import write_part
    from ade_train.bench.savings import main

    fig = _fig()
    fig["certificate"]["policy"] = {"tau_high": 0.9, "tau_low": 0.0, "s_max": 1, "refine": False}
    fig["coverage"]["rows"] = [
        {**fig["coverage"], "declared": True, "max_margin": 0.05, "declared_targets": {0.02: 150, 0.03: 50}}
    ]
    md, targets, misses = render(fig)
    meta = {"date": "2026-01-01 00:00 UTC", "machine": "m"}
    write_part(tmp_path, "savings", fig, md, targets, misses, meta=meta)
    assert main(["--out", str(tmp_path), "--render-only"]) == 0  # JSON made the declared margins strings
    text = (tmp_path / "parts" / "savings.md").read_text()
    assert "2026-01-01 00:00 UTC" in text  # the date the figures were measured on, not the re-render's
    assert "fresh samples only, no refinement" in text and "declared: 0.02 x150, 0.03 x50" in text
    assert json.loads((tmp_path / "parts" / "savings.json").read_text())["meta"] == meta
    fig["certificate"]["policy"]["refine"] = True
    assert "critique's feedback" in "\n".join(render(fig)[0])


def test_an_export_that_never_calls_the_verifier_renders_without_a_verifier_share():
    fig = _fig(calls=0.0)
    for row in fig["live"]["policies"].values():
        row["verifier_calls_per_request"], row["verifier_share_of_best_of_8"] = 0.0, None
    md, targets, _ = render(fig)
    assert "| 0.00 (-) |" in "\n".join(md)
    assert len(targets) == 5 and not any("verifier calls" in t["target"] for t in targets)
