"""The serve_load bench part at a tiny size: a real ade-serve on loopback, figures and targets written."""

from __future__ import annotations

import json

from ade_train.bench import serve_load


def test_serve_load_part_runs_and_writes_its_figures(tmp_path):
    rc = serve_load.main(
        [
            "--out",
            str(tmp_path),
            "--seconds",
            "1",
            "--clients",
            "1,2",
            "--queue-timeout",
            "0.2",
            "--no-baseline",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "parts" / "serve_load.json").read_text())
    cap = doc["figures"]["capacity"]
    assert set(cap) == {"1", "2"} and cap["1"]["statuses"].get("200", 0) >= 1
    assert cap["1"]["p50_ms"] > 0 and cap["1"]["throughput_rps"] > 0
    shed = doc["figures"]["overload"]["shedding"]
    assert set(shed["statuses"]) <= {"200", "429", "503", "504"}, shed["statuses"]
    assert shed["shed_with_retry_after"] == sum(n for c, n in shed["statuses"].items() if c in ("429", "503"))
    assert [t["target"].split(":")[0] for t in doc["targets"]] == ["serve_load"] * 3
    md = (tmp_path / "parts" / "serve_load.md").read_text()
    assert md.startswith("## Serving under load") and "| 2 |" in md
