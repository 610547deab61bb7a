"""The calibration split: the training run's, or every request of a set collected for calibration."""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURES

from ade_runtime.errors import InputError
from ade_train.calibrate import calibration_split
from ade_train.splits import SPLITS_FILE, split_ids

FIXTURE = FIXTURES / "testbed_small"


def test_all_takes_every_judged_request_and_auto_takes_the_split(tmp_path):
    every = calibration_split(FIXTURE, tmp_path, split="all")
    assert len(every.records) == 40 and "split: all" in every.source_of_split
    auto = calibration_split(FIXTURE, tmp_path, seed=0)
    from ade_runtime.traces import load_records

    expected = set(split_ids(load_records(FIXTURE, images="none")[0], seed=0)["calibration"])
    assert {r.id for r in auto.records} == expected and 0 < len(expected) < 40
    # a training run's splits.json wins over the seed; --split all ignores it
    splits = {"train": [], "val": [], "calibration": ["req-000001", "req-000002"], "test": []}
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"splits": splits}))
    assert [r.id for r in calibration_split(FIXTURE, tmp_path).records] == ["req-000001", "req-000002"]
    assert len(calibration_split(FIXTURE, tmp_path, split="all").records) == 40
    with pytest.raises(InputError, match="split='bogus'"):
        calibration_split(FIXTURE, tmp_path, split="bogus")
