"""Shared test helpers (importable as ``helpers``: pytest puts tests/ on sys.path, see pyproject)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
FIXTURE_SMALL = FIXTURES / "testbed_small"  # the committed 40-request testbed fixture
