"""The benchmark's statistical sections end to end on the committed fixture: replay with intervals, curves,
re-split coverage, a paired live loop and the report that renders them (small, so it runs in CI)."""

from __future__ import annotations

from helpers import FIXTURES
from helpers.predictors import calibrator, card

from ade_runtime.offline.evaluate import evaluate
from ade_runtime.overhead import analytic_overhead
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench import certification
from ade_train.bench.live import live_loop
from ade_train.bench.report import certification_targets, check_targets, write_report
from ade_train.bench.run import certificate_of

FIXTURE = FIXTURES / "testbed_small"


def test_report_renders_certificates_coverage_curves_and_paired_live_rows(tmp_path, monkeypatch):
    records, _ = load_records(FIXTURE, images="none")
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    replay = evaluate(
        records, preds, ["single", "best_of_2", "best_of_4", "best_of_8", "ade", "oracle"], ci=0.9
    )
    full = certification.grid_configs
    monkeypatch.setattr(certification, "grid_configs", lambda r, p: full(r, p)[::90])
    cov = certification.run(records, preds, targets=(0.9,), n_splits=5)
    live = live_loop(preds, 3, seed=1)
    assert {"best_of_8", "best_of_8_cheap", "ade", "ade_no_refine"} <= set(live)
    # this calibrator does not read the verifier's score: nobody calls it, and no share is claimed
    assert live["best_of_8"]["verifier_calls_per_request"] == 0 and live["verifier_call_share"] is None
    assert live["best_of_8"]["vs_best_of_8"]["diff"] == 0.0 and live["ade"]["vs_best_of_8"]["small_sample"]
    ratio = analytic_overhead("flux-kontext").ratio_to_attempt
    results = {
        "meta": {"date": "today", "machine": "test", "replay_note": "fixture"},
        "replay": replay,
        "certification": cov,
        "certificates": {"none": certificate_of(tmp_path / "missing" / "export")},
        "live": live,
        "targets": check_targets(replay, ratio, live) + certification_targets(cov),
        "misses": [],
    }
    md = write_report(tmp_path / "report", results)
    text = md.read_text()
    for heading in (
        "## Certified thresholds",
        "## Does the certificate hold? Re-split coverage",
        "## Compute-quality curves (replay)",
        "## Live loop with the synthetic backbone",
        "score - Best-of-8 (90% paired CI)",
    ):
        assert heading in text, heading
    assert "paired 90% CI of the difference above -0.01" in text
    assert "non-decreasing in N (1, 2, 4, 8)" in text and "verifier calls / request" in text
    for png in ("pareto.png", "curves.png", "categories.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "report.json").is_file()


def test_cascade_share_target_needs_both_the_share_and_the_quality():
    def live(ade_calls, lo, hi):
        row = {"mean_score": 0.8, "gpu_seconds_share_of_best_of_8": 0.3, "requests": 500}
        return {
            "best_of_8": {
                **row,
                "verifier_calls_per_request": 8.0,
                "vs_best_of_8": {"diff": 0, "lo": 0, "hi": 0},
            },
            "ade": {
                **row,
                "verifier_calls_per_request": ade_calls,
                "vs_best_of_8": {"diff": 0, "lo": lo, "hi": hi},
            },
            "verifier_call_share": ade_calls / 8.0,
        }

    def met(**kw) -> bool:
        (t,) = [
            t for t in check_targets({"policies": {}}, None, live(**kw)) if "verifier calls" in t["target"]
        ]
        return t["met"]

    assert met(ade_calls=2.0, lo=-0.02, hi=0.01)  # a third of the calls, quality level
    assert not met(ade_calls=3.0, lo=-0.02, hi=0.01)  # too many calls
    assert not met(ade_calls=2.0, lo=-0.05, hi=-0.01)  # cheaper but worse than best_of_8
