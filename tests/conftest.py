"""Shared fixtures. Helpers that tests import directly live in ``tests/helpers`` (on sys.path via pyproject)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FIXTURE_SMALL
from helpers.predictors import calibrator, card


@pytest.fixture(scope="session")
def testbed_small() -> Path:
    """The committed 40-request testbed trace fixture (4 candidates x 3 rounds x {0, 512} tokens)."""
    return FIXTURE_SMALL


@pytest.fixture(scope="session")
def testbed_records(testbed_small):
    """Its records, read once per session (every one valid)."""
    from ade_runtime.traces import load_records

    records, rejects = load_records(testbed_small, images="none")
    assert records and not rejects
    return records


@pytest.fixture
def tiny_predictors():
    """Untrained but real CARD + a logistic calibrator over clip_t (no critique)."""
    from ade_runtime.predictors.bundle import Predictors

    return Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
