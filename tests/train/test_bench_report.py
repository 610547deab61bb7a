"""The benchmark's statistical sections end to end on the committed fixture: replay with intervals, curves,
re-split coverage, a paired live loop and the report that renders them (small, so it runs in CI)."""

from __future__ import annotations

from helpers import FIXTURES
from helpers.predictors import calibrator, card

from ade_runtime.cli.replay import evaluate
from ade_runtime.overhead import analytic_overhead
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench import certification
from ade_train.bench.report import certification_targets, check_targets, write_report
from ade_train.bench.run import certificate_of, live_loop

FIXTURE = FIXTURES / "testbed_small"


def test_report_renders_certificates_coverage_curves_and_paired_live_rows(tmp_path, monkeypatch):
    records, _ = load_records(FIXTURE, images="none")
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    replay = evaluate(records, preds, ["single", "best_of_4", "best_of_8", "ade", "oracle"], ci=0.9)
    full = certification.grid_configs
    monkeypatch.setattr(certification, "grid_configs", lambda r, p: full(r, p)[::90])
    cov = certification.run(records, preds, targets=(0.9,), n_splits=5)
    live = live_loop(preds, 3, seed=1)
    assert {"best_of_8", "ade", "ade_no_refine"} <= set(live)
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
    for png in ("pareto.png", "curves.png", "categories.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "report.json").is_file()
