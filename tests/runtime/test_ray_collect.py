"""``ade-collect --ray`` on a local Ray cluster (2 CPUs, testbed backbone), black box through the CLI:
the dataset equals a single-process run's; a worker killed mid-line or after its line but before
the acknowledgement leaves every request once; a job that gave a request up is completed by a rerun.

One Ray cluster serves the whole module (``ray.init`` takes seconds here) and is shut down after it.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers.requests import write_requests

from ade_runtime.cli import collect
from ade_runtime.traces import TraceDataset
from ade_runtime.traces import cli as traces_cli

ray = pytest.importorskip("ray", reason="the ray extra (make install puts it in)")

N = 8
GRID = ["--backbone", "testbed", "--candidates", "2", "--rounds", "2", "--reasoning", "0,512", "--seed", "3"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    return write_requests(tmp_path_factory.mktemp("requests"), N)


@pytest.fixture(scope="module")
def single(requests, tmp_path_factory):
    """The reference: plain ade-collect, one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    assert collect.main([*GRID, "--requests", str(requests), "--out", str(out)]) == 0
    return comparable(out)


def comparable(out) -> dict:
    """Records by id as JSON, without what differs between runs (seconds per attempt)."""
    ds = TraceDataset(out, images="decode")
    recs = {}
    for rec in ds:
        assert rec.id not in recs
        obj = rec.to_json()
        for a in obj["attempts"]:
            a["cost"].pop("latency_s")
        recs[rec.id] = obj
    return recs


def ray_collect(requests, out, capsys, *extra) -> tuple[int, dict]:
    rc = collect.main([*GRID, "--requests", str(requests), "--out", str(out), "--ray", *extra])
    return rc, last_json(capsys.readouterr().out)


def last_json(text: str) -> dict:
    """The last JSON object line (Ray's raylet may print its own lines to stdout)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def validate(out, capsys) -> tuple[int, dict]:
    rc = traces_cli.main(["validate", str(out), "--decode", "--quiet"])
    return rc, last_json(capsys.readouterr().out)


def valid_ids(out) -> Counter:
    return Counter(r.id for r in TraceDataset(out, images="none"))


def test_ray_dataset_equals_the_single_process_one(cluster, requests, single, tmp_path, capsys):
    out = tmp_path / "ray"
    rc, summary = ray_collect(requests, out, capsys, "--workers", "2")
    assert rc == 0, summary
    assert summary["written"] == N and summary["missing"] == 0 and summary["workers"] == 2
    assert comparable(out) == single  # same attempts, same scores, same images, same meta
    shards = sorted(p.name for p in out.glob("*.jsonl"))
    assert shards and all(s.startswith("ray-") for s in shards)
    rc, report = validate(out, capsys)
    assert rc == 0 and report["valid"] == N and report["rejected"] == 0, report
    # a rerun finds everything written and starts no work
    rc, summary = ray_collect(requests, out, capsys, "--workers", "2")
    assert rc == 0 and summary["written"] == 0 and summary["skipped"] == N


@pytest.mark.parametrize("mode", ["mid_line", "after_line"])
def test_a_killed_worker_loses_and_duplicates_nothing(
    mode, cluster, requests, single, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "ray"
    monkeypatch.setenv("ADE_RAY_FAULT", f"q3:{mode}")  # test-only: the worker collecting q3 dies once
    rc, summary = ray_collect(requests, out, capsys, "--workers", "2")
    assert rc == 0, summary
    assert summary["missing"] == 0 and summary["failed"] == 0
    assert valid_ids(out) == Counter({f"q{i}": 1 for i in range(N)})  # every request exactly once
    assert comparable(out) == single
    rc, report = validate(out, capsys)
    if mode == "mid_line":
        # the dead worker's half line is reported, never taken for a record
        assert rc != 0 and report["valid"] == N
        assert report["reasons"] == {"truncated_line": 1}, report
        assert summary["written"] == N
    else:
        # the line was complete: the retry found it, wrote no second one, and counted it as skipped
        assert rc == 0 and report["valid"] == N and report["rejected"] == 0, report
        assert summary["written"] == N - 1 and summary["skipped"] == 1


def test_a_rerun_completes_an_interrupted_job(cluster, requests, single, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ray"
    monkeypatch.setenv("ADE_RAY_FAULT", "q5:mid_line")
    # --max-retries 0: the request a worker died on is given up in this job (exit 1, said why)
    rc, summary = ray_collect(requests, out, capsys, "--workers", "1", "--max-retries", "0")
    assert rc == 1 and summary["written"] == N - 1 and summary["failed"] == 1
    assert set(valid_ids(out)) == {f"q{i}" for i in range(N)} - {"q5"}
    monkeypatch.delenv("ADE_RAY_FAULT")
    rc, summary = ray_collect(requests, out, capsys, "--workers", "1")
    assert rc == 0 and summary["written"] == 1 and summary["skipped"] == N - 1, summary
    assert valid_ids(out) == Counter({f"q{i}": 1 for i in range(N)})
    assert comparable(out) == single


def test_bad_ray_options_are_refused_before_any_work(requests, tmp_path, capsys):
    base = [*GRID, "--requests", str(requests), "--out", str(tmp_path / "o"), "--ray"]
    assert collect.main([*base, "--shard", "0/2"]) == 2
    assert "--shard 0/2 and --ray do not combine" in capsys.readouterr().err
    assert collect.main([*base, "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_missing_ray_names_the_extra(requests, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    rc = collect.main([*GRID, "--requests", str(requests), "--out", str(tmp_path / "o"), "--ray"])
    assert rc == 2 and "pip install 'ade-adaptive[ray]'" in capsys.readouterr().err
