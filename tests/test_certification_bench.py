"""The re-split coverage benchmark on the committed testbed fixture: matrix, reference and coverage rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from predictor_helpers import calibrator, card

from ade_runtime.policy import preset, replay_policy
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench import certification

FIXTURE = Path(__file__).parent / "fixtures" / "testbed_small"


@pytest.fixture(scope="module")
def setup():
    records, rejects = load_records(FIXTURE, images="none")
    assert records and not rejects
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    return records, preds


def test_matrix_rows_are_the_replayed_policies(setup):
    records, preds = setup
    configs = certification.grid_configs(records, preds)[:40]
    m = certification.policy_matrix(records, preds, configs, "best_of_8")
    assert m["scores"].shape == (len(records), 40) == m["seconds"].shape
    assert np.all((m["scores"] >= 0) & (m["scores"] <= 1)) and np.all(m["seconds"] > 0)
    # the reference column is exactly what replay of best_of_8 gives, request by request
    ref = replay_policy(
        records,
        "best_of_8",
        preds.policy,
        signals=lambda r: certification_signals(r, preds),
        overhead=m["overhead"],
    )
    assert np.allclose(m["reference_scores"], [o.score for o in ref])
    assert preset("best_of_8", preds.policy).default_budget == 8


def certification_signals(rec, preds):
    from ade_runtime.policy.signals import record_signals

    return record_signals(rec, preds.calibrator)


def test_run_reports_coverage_rows_for_both_p_values(setup, monkeypatch):
    records, preds = setup
    full = certification.grid_configs
    monkeypatch.setattr(certification, "grid_configs", lambda r, p: full(r, p)[::60])
    out = certification.run(records, preds, targets=(0.9,), n_splits=10)
    assert out["n_requests"] == len(records) and len(out["rows"]) == 2
    for row in out["rows"]:
        assert row["certified_splits"] + row["uncertified_splits"] == 10
        assert row["p_value"] in ("wsr", "hb") and row["required_coverage"] == pytest.approx(0.9)
