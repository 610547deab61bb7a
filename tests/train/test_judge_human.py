"""Human label import (CSV / JSONL) through ``ade-judge --judge human:FILE``; agreement between labelings."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ade_runtime.traces import EditRecord, TraceDataset, TraceWriter
from ade_runtime.traces.records import Attempt, Cost, Flaw, Judge
from ade_train.judge import HumanJudge, agreement
from ade_train.judge.cli import main


def _dataset(root):
    """Two requests; req-1 c1 has no image; req-1 c0 is already judged."""
    with TraceWriter(root) as w:
        for i in range(2):
            rid = f"req-{i}"
            src = w.write_image(f"images/{rid}/source.png", Image.new("RGB", (16, 16), (i * 90, 10, 10)))
            atts = []
            for c in range(2):
                img = (
                    None
                    if (i, c) == (1, 1)
                    else w.write_image(f"images/{rid}/c{c}.png", Image.new("RGB", (16, 16), (10, c * 90, 10)))
                )
                judge = (
                    Judge(0.2, False, (Flaw("artifact", (0.1, 0.1, 0.2, 0.2)),)) if (i, c) == (1, 0) else None
                )
                atts.append(Attempt(c, 0, 0, "make it green", Cost(28), image=img, judge=judge))
            w.write(EditRecord(rid, "make it green", src, "flux-kontext", atts, category="color"))


CSV = """id,candidate,round,reasoning_tokens,score,pass,kind,x0,y0,x1,y1
req-0,0,0,0,0.9,true,,,,,
req-0,1,0,0,0.3,,wrong_color,0.1,0.2,0.5,0.6
req-0,1,0,0,0.3,,leakage,0.6,0.6,0.9,0.9
req-1,1,0,0,,fail,,,,,
req-1,0,0,0,1.0,true,,,,,
req-9,0,0,0,0.5,true,,,,,
req-0,2,0,0,0.5,true,,,,,
req-0,0,1,0,1.5,true,,,,,
req-0,0,2,0,0.5,true,artifact,0.5,0.5,0.4,0.9
req-0,0,3,0,,,,,,,
req-0,0,0,0,0.1,false,,,,,
"""


def test_csv_import_labels_attempts_and_reports_every_bad_row(tmp_path, capsys):
    traces, out, labels = tmp_path / "in", tmp_path / "out", tmp_path / "labels.csv"
    _dataset(traces)
    labels.write_text(CSV)
    code = main(
        ["--traces", str(traces), "--out", str(out), "--judge", f"human:{labels}", "--no-progress", "--json"]
    )
    assert code == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    recs = {r.id: r for r in TraceDataset(out)}
    g0, g1 = recs["req-0"].attempt_grid(), recs["req-1"].attempt_grid()
    assert (g0[(0, 0, 0)].judge.score, g0[(0, 0, 0)].judge.passed) == (0.9, True)
    j = g0[(1, 0, 0)].judge  # score only -> pass by threshold 0.7; two rows -> two flaws
    assert (j.score, j.passed, [f.kind for f in j.flaws]) == (0.3, False, ["wrong_color", "leakage"])
    assert j.flaws[0].box == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert (g1[(1, 0, 0)].judge.score, g1[(1, 0, 0)].judge.passed) == (
        0.0,
        False,
    )  # no image: people can still label
    assert g1[(0, 0, 0)].judge.score == 0.2  # already judged: kept as it was, the row is not used
    by_line = {int(p.split(":")[1]): p for p in summary_problems(out)}
    assert "unmatched" in by_line[7] and "req-9" in by_line[7]  # unknown request id
    assert "unmatched" in by_line[8]  # candidate 2 does not exist
    assert "invalid_value" in by_line[9] and "score" in by_line[9]
    assert "invalid_box" in by_line[10]
    assert "missing_field" in by_line[11]
    assert "conflict" in by_line[12]
    assert summary["unmatched_labels"] == 2 and summary["invalid_labels"] == 4
    assert "labels.csv:7" in cap.err  # reported on the console too


def summary_problems(out):
    return json.loads((out / "judge-summary.json").read_text())["label_problems"]


def test_jsonl_import_with_flaw_lists_and_bad_lines(tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [
        {
            "id": "req-0",
            "candidate": 0,
            "round": 0,
            "reasoning_tokens": 0,
            "pass": True,
            "flaws": [{"kind": "artifact", "box": [0, 0, 0.5, 0.5]}],
        },
        "not json at all",
        {"id": "req-0", "candidate": -1, "round": 0, "reasoning_tokens": 0, "score": 0.5},
        {"id": "req-0", "candidate": 1, "round": 0, "reasoning_tokens": 0, "pass": "maybe"},
    ]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    judge = HumanJudge(path)
    assert len(judge.labels) == 1
    (label,) = judge.labels.values()
    assert (label.score, label.passed, label.flaws[0].kind) == (1.0, True, "artifact")
    assert [(p.line, p.reason) for p in judge.problems] == [
        (2, "invalid_json"),
        (3, "invalid_value"),
        (4, "invalid_value"),
    ]


def test_csv_without_key_columns_is_an_input_error(tmp_path, capsys):
    traces, labels = tmp_path / "in", tmp_path / "l.csv"
    _dataset(traces)
    labels.write_text("request,score\nreq-0,0.5\n")
    code = main(["--traces", str(traces), "--out", str(tmp_path / "o"), "--judge", f"human:{labels}"])
    assert code == 2 and "candidate" in capsys.readouterr().err


def test_agree_identical_and_perturbed_labelings(tmp_path, capsys):
    traces, a, b, labels_a, labels_b = (tmp_path / n for n in ("in", "a", "b", "a.csv", "b.csv"))
    _dataset(traces)
    head = "id,candidate,round,reasoning_tokens,score,pass,kind,x0,y0,x1,y1\n"
    labels_a.write_text(
        head + "req-0,0,0,0,0.9,true,artifact,0.1,0.1,0.5,0.5\nreq-0,1,0,0,0.3,false,,,,,\n"
        "req-1,1,0,0,0.6,false,,,,,\n"
    )
    labels_b.write_text(head + "req-0,0,0,0,0.4,false,artifact,0.3,0.1,0.7,0.5\nreq-0,1,0,0,0.8,true,,,,,\n")
    for lab, out in ((labels_a, a), (labels_b, b)):
        assert (
            main(["--traces", str(traces), "--out", str(out), "--judge", f"human:{lab}", "--no-progress"])
            == 0
        )
    capsys.readouterr()
    assert main(["agree", str(a), str(a), "--json"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        same["pairs"] == 4 and same["spearman"] == pytest.approx(1.0) and same["kappa"] == pytest.approx(1.0)
    )
    assert same["flaws"]["mean_iou"] == pytest.approx(1.0)
    r = agreement(a, b)
    assert r["pairs"] == 3 and r["judged_only_a"] == 1  # req-1 c1 labelled only in A
    assert r["spearman"] < 1.0 and r["kappa"] < 1.0
    # req-0 c0 boxes overlap by 1/3; req-1 c0 keeps the same pre-existing flaw on both sides (IoU 1)
    assert r["flaws"]["matched"] == 2 and r["flaws"]["mean_iou"] == pytest.approx((1 / 3 + 1) / 2)
