"""ade-traces validate / stats: exit codes, the last-line JSON, the rejects file and the statistics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# the shared builders live next to this file (works with or without tests/__init__.py)
from helpers.traces import png_bytes, put_images, record_dict, write_shard

from ade_runtime.traces import Attempt, Cost, EditRecord, Judge, TraceWriter
from ade_runtime.traces.cli import main

EXE = Path(sys.executable).with_name("ade-traces")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=60)


def good_dataset(root: Path, n: int = 3) -> None:
    objs = [put_images(root, record_dict(f"req-{i}")) for i in range(n)]
    write_shard(root, objs)


def test_validate_all_valid_exits_0(tmp_path):
    good_dataset(tmp_path)
    res = run("validate", str(tmp_path))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("records", "valid", "rejected", "reasons")} == {
        "records": 3,
        "valid": 3,
        "rejected": 0,
        "reasons": {},
    }
    assert summary["images"] == "header" and summary["shards"] == 1
    assert "ade-traces:" in res.stderr and "3 lines" in res.stderr  # progress goes to stderr


def test_validate_with_rejects_exits_1_and_writes_the_report(tmp_path):
    good_dataset(tmp_path)
    bad = record_dict("bad-1")
    bad["attempts"][2]["cost"]["nfe"] = -5
    put_images(tmp_path / "more", bad)
    missing = record_dict("bad-2")
    write_shard(tmp_path, [bad, missing, "not json", record_dict("req-0")], "more/extra.jsonl")
    put_images(tmp_path / "more", missing)
    put_images(tmp_path / "more", record_dict("req-0"))
    (tmp_path / "more" / "images" / "bad-2" / "c1_r1_t0.png").unlink()
    report = tmp_path / "rejects.jsonl"
    res = run("validate", str(tmp_path), "--rejects", str(report), "--decode")
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["records"], summary["valid"], summary["rejected"]) == (7, 3, 4)
    assert summary["reasons"] == {"duplicate_id": 1, "invalid_json": 1, "missing_image": 1, "out_of_range": 1}
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(r["shard"], r["line"], r["id"], r["reason"], r["field"]) for r in rows] == [
        ("more/extra.jsonl", 1, "bad-1", "out_of_range", "attempts[2].cost.nfe"),
        ("more/extra.jsonl", 2, "bad-2", "missing_image", "attempts[3].image"),
        ("more/extra.jsonl", 3, None, "invalid_json", None),
        ("traces-00000.jsonl", 1, "req-0", "duplicate_id", "id"),  # shards in sorted order: more/ first
    ]
    assert all("message" in r and r["message"] for r in rows)
    assert not list(tmp_path.glob(".rejects.jsonl.*"))  # the temporary report was moved into place


def test_no_images_mode_skips_files(tmp_path):
    write_shard(tmp_path, [record_dict("req-0")])  # no image files at all
    assert main(["validate", str(tmp_path), "--quiet"]) == 1
    assert main(["validate", str(tmp_path), "--quiet", "--no-images"]) == 0


@pytest.mark.parametrize("setup", ["missing", "empty", "file"])
def test_unusable_path_exits_2_with_one_line(tmp_path, setup):
    path = tmp_path / "ds"
    if setup == "empty":
        path.mkdir()
    elif setup == "file":
        path.write_text("{}")
    for cmd in ("validate", "stats"):
        res = run(cmd, str(path))
        assert res.returncode == 2
        assert res.stdout == ""
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("ade-traces: error:")
        assert "Traceback" not in res.stderr and str(path) in res.stderr


def test_rejects_file_where_no_folder_can_be_made_exits_2(tmp_path, capsys):
    good_dataset(tmp_path)
    (tmp_path / "a-file").write_text("x")  # a missing folder is created; one under a file cannot be
    assert main(["validate", str(tmp_path), "--rejects", str(tmp_path / "a-file" / "r.jsonl")]) == 2
    assert "--rejects" in capsys.readouterr().err


def stats_dataset(root: Path) -> None:
    """Four judged requests with hand-known outcomes, one request without any judge."""
    ok, ko = Judge(0.9, True), Judge(0.1, False)

    def att(c, r, judge, t=0, nfe=10, lat=1.0):
        return Attempt(c, r, t, "p", Cost(nfe, lat), None, {}, judge)

    grids = {
        "a": [att(0, 0, ok), att(0, 0, ko, t=128)],  # passes at once
        "b": [att(0, 0, ko), att(0, 1, ok), att(1, 0, ko)],  # passes after one refinement round
        "c": [att(0, 0, ko), att(1, 0, ok), att(2, 0, ko)],  # passes with the second candidate
        "d": [att(0, 0, ko), att(0, 1, ko, lat=None)],  # never passes
        "e": [att(0, 0, None)],  # not judged
    }
    with TraceWriter(root, fsync=False) as w:
        src = w.write_image("s.png", png_bytes())
        for rid, attempts in grids.items():
            cat = None if rid == "e" else ("add" if rid in "ab" else "color")
            w.write(EditRecord(rid, "do it", src, "bagel" if rid == "a" else "flux-kontext", attempts, cat))


def test_stats_json_matches_the_hand_computed_grid(tmp_path, capsys):
    stats_dataset(tmp_path)
    write_shard(tmp_path, ["garbage"], "z.jsonl")
    assert main(["stats", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["requests"], s["attempts"]) == (5, 11)
    assert s["backbones"] == {"bagel": 1, "flux-kontext": 4}
    assert s["categories"] == {"(none)": 1, "add": 2, "color": 2}
    assert s["reasoning_tokens"] == {"0": 10, "128": 1}
    assert s["judge_coverage"] == {
        "attempts_with_judge": 10,
        "share": round(10 / 11, 6),
        "judged_requests": 4,
    }
    assert s["single_pass_rate"] == 0.25
    assert s["pass_rate_by_round"] == {"0": 0.5, "1": 0.75}
    assert s["pass_rate_by_candidates"] == {"1": 0.25, "2": 0.5, "3": 0.5}
    assert (s["any_pass_rate"], s["never_pass_share"]) == (0.75, 0.25)
    assert s["cost"] == {
        "nfe_total": 110,
        "nfe_per_request": 22.0,
        "latency_s_total": 10.0,
        "attempts_with_latency": 10,
    }
    assert (s["rejected"], s["reasons"]) == (1, {"invalid_json": 1})


def test_stats_table_is_readable(tmp_path):
    stats_dataset(tmp_path)
    res = run("stats", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "requests            5" in out
    assert "r0: 50.0%  r1: 75.0%" in out and "k1: 25.0%  k2: 50.0%  k3: 50.0%" in out
    assert "single attempt     25.0%" in out and "never passes       25.0%" in out


def test_rejects_file_in_a_new_folder_is_written(tmp_path):
    write_shard(tmp_path / "ds", ["not json"])
    target = tmp_path / "reports" / "new" / "rejects.jsonl"
    proc = run("validate", str(tmp_path / "ds"), "--rejects", str(target), "--no-images")
    assert proc.returncode == 1 and json.loads(target.read_text().splitlines()[0])["reason"] == "invalid_json"
