"""The re-split coverage benchmark on the committed testbed fixture: matrix, reference and coverage rows."""

from __future__ import annotations

import numpy as np
import pytest

from ade_runtime.offline import replay_policy
from ade_runtime.policy import preset
from ade_train.bench import certification


@pytest.fixture
def setup(testbed_records, tiny_predictors):
    return testbed_records, tiny_predictors


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
    from ade_runtime.offline.signals import record_signals

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
