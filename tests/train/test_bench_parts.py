"""Bench parts land in the report: their section, their targets and their misses."""

import json

import pytest
from helpers import FIXTURES
from helpers.predictors import calibrator, card

from ade_runtime.offline.evaluate import evaluate
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench.parts import load_parts, part_target, write_part
from ade_train.bench.report import write_report


def test_part_round_trip_and_report(tmp_path):
    write_part(
        tmp_path,
        "demo_part",
        {"rps": 12.5},
        ["## Demo part", "", "| clients | rps |", "|---:|---:|", "| 1 | 12.5 |"],
        targets=[part_target("demo: at least 10 requests/s", "12.5", True, 2.5)],
        misses=["demo: nothing missed"],
    )
    (parts,) = load_parts(tmp_path)
    assert parts["figures"] == {"rps": 12.5}
    assert parts["markdown"].startswith("## Demo part")
    assert "make bench-demo-part" in parts["markdown"]

    results = json.loads(json.dumps(_minimal_results(), default=float))
    md = write_report(tmp_path, results).read_text()
    assert "## Demo part" in md and "| 1 | 12.5 |" in md
    assert "| demo: at least 10 requests/s | 12.5 | yes | +2.500 |" in md
    assert "- demo: nothing missed" in md
    # report.json keeps only the main bench's targets: a re-render does not duplicate the parts'.
    assert json.loads((tmp_path / "report.json").read_text()).get("targets", []) == []
    md2 = write_report(tmp_path, json.loads((tmp_path / "report.json").read_text())).read_text()
    assert md2.count("demo: at least 10 requests/s") == 1


def test_part_name_must_name_a_file(tmp_path):
    with pytest.raises(ValueError, match="identifier"):
        write_part(tmp_path, "../evil", {}, ["## x"])


def _minimal_results() -> dict:
    records, _ = load_records(FIXTURES / "testbed_small", images="none")
    preds = Predictors(card=card(), calibrator=calibrator(bias=-4.0, weight=12.0))
    replay = evaluate(records, preds, ["single", "best_of_8", "ade"])
    return {"meta": {"date": "today", "machine": "test", "replay_note": "fixture"}, "replay": replay}
