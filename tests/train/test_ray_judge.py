"""``ade-judge --ray`` on a local Ray cluster (2 CPUs, the testbed judge), through the CLI: the dataset
equals a single-process run's, and a worker killed mid-run loses and duplicates no label.

The input is the committed testbed fixture with its judges stripped; ``--limit`` keeps it small.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import FIXTURE_SMALL
from helpers.traces import strip_judges

from ade_runtime.traces import TraceDataset
from ade_train.judge import read_journal
from ade_train.judge.cli import main

ray = pytest.importorskip("ray", reason="the ray extra (make install puts it in)")

LIMIT = "10"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    d = tmp_path_factory.mktemp("logged") / "traces"
    strip_judges(FIXTURE_SMALL, d)
    return d


@pytest.fixture(scope="module")
def single(logged, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    assert (
        main(
            [
                "--traces",
                str(logged),
                "--out",
                str(out),
                "--judge",
                "testbed",
                "--limit",
                LIMIT,
                "--no-progress",
            ]
        )
        == 0
    )
    return records(out)


def records(out) -> dict:
    ds = TraceDataset(out, images="decode")
    recs = {r.id: r.to_json() for r in ds}
    assert ds.rejects == [] and recs
    return recs


def judge_on_ray(logged, out, capsys, *extra) -> tuple[int, dict]:
    rc = main(
        ["--traces", str(logged), "--out", str(out), "--judge", "testbed", "--limit", LIMIT]
        + ["--no-progress", "--json", "--ray", "--workers", "2", "--batch-size", "8", *extra]
    )
    text = capsys.readouterr().out
    return rc, json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_ray_judging_equals_the_single_process_run(cluster, logged, single, tmp_path, capsys):
    out = tmp_path / "ray"
    rc, summary = judge_on_ray(logged, out, capsys)
    assert rc == 0 and summary["this_run"]["failed"] == 0
    assert summary["labelled_by_this_judge"] > 0
    assert records(out) == single  # every label, every record, byte-equal JSON
    # a rerun on the finished dataset does nothing
    rc, again = judge_on_ray(logged, out, capsys)
    assert rc == 0 and again == summary


def test_a_killed_judge_worker_loses_and_duplicates_no_label(
    cluster, logged, single, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "ray"
    victim = sorted(single)[3]
    monkeypatch.setenv("ADE_RAY_FAULT", victim)  # test-only: the worker given its first batch dies once
    rc, summary = judge_on_ray(logged, out, capsys)
    assert rc == 0 and summary["this_run"]["failed"] == 0
    assert len(list(out.glob(".ray-fault-*"))) == 1  # the worker did die
    assert records(out) == single
    refs = Counter(
        json.dumps(line["ref"], sort_keys=True)
        for line in read_journal(out / "judge-journal.ndjson")
        if line["kind"] != "header"
    )
    assert refs and set(refs.values()) == {1}  # each attempt journaled exactly once
    assert any(json.loads(r)["id"] == victim for r in refs)


def test_a_batch_that_kills_its_workers_is_given_up(cluster, logged, single, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ray"
    victim = sorted(single)[5]
    monkeypatch.setenv("ADE_RAY_FAULT", victim)
    rc, summary = judge_on_ray(logged, out, capsys, "--ray-max-retries", "0")
    assert rc == 0 and summary["this_run"]["failed"] > 0  # the victim's batch: judge_error, said why
    failures = [line for line in read_journal(out / "judge-journal.ndjson") if line["kind"] == "failure"]
    assert {f["reason"] for f in failures} == {"judge_error"}
    assert all("Ray workers died judging this batch" in f["message"] for f in failures)
    assert any(f["ref"]["id"] == victim for f in failures)
    got = records(out)
    assert got.keys() == single.keys() and got != single  # every record, some labels missing
    assert not list(out.glob(".ray-batches-*"))  # the bookkeeping is not left in the dataset


def test_human_labels_are_refused_on_ray(logged, tmp_path, capsys):
    rc = main(["--traces", str(logged), "--out", str(tmp_path / "o"), "--judge", "human:x.csv", "--ray"])
    assert rc == 2 and "run ade-judge without --ray" in capsys.readouterr().err


def test_collect_then_judge_on_ray_trains_like_without(cluster, tmp_path, capsys, monkeypatch):
    """requests -> ade-collect --ray (a worker killed mid-line) -> ade-judge --ray -> CARD's data module:
    the same splits and tensors as the single-process pipeline on the same requests."""
    import torch
    from helpers.requests import write_requests

    from ade_runtime.cli import collect
    from ade_train.card.data import TraceDataModule

    requests = write_requests(tmp_path / "requests", 10)
    grid = ["--backbone", "testbed", "--requests", str(requests), "--candidates", "2", "--rounds", "2"]
    judged = {}
    for mode in ("single", "ray"):
        extra = ["--ray", "--workers", "2"] if mode == "ray" else []
        if mode == "ray":
            monkeypatch.setenv("ADE_RAY_FAULT", "q4:mid_line")
        assert collect.main([*grid, "--out", str(tmp_path / f"{mode}-traces"), *extra]) == 0
        monkeypatch.delenv("ADE_RAY_FAULT", raising=False)
        rc = main(
            ["--traces", str(tmp_path / f"{mode}-traces"), "--out", str(tmp_path / f"{mode}-judged")]
            + ["--judge", "testbed", "--no-progress", *extra]
        )
        assert rc == 0
        capsys.readouterr()
        dm = TraceDataModule(str(tmp_path / f"{mode}-judged"), out_dir=str(tmp_path / f"{mode}-run"))
        dm.setup("fit")
        judged[mode] = dm
    single, ray_dm = judged["single"], judged["ray"]
    collected = TraceDataset(tmp_path / "ray-traces", images="none")
    assert len(list(collected)) == 10 and [r.reason for r in collected.rejects] == ["truncated_line"]
    assert [r.reason for r in ray_dm.rejects] == []  # the cut line stayed in the collected traces
    assert single.split_ids == ray_dm.split_ids and single.levels == ray_dm.levels
    for split in ("train", "test"):
        a, b = single.tensors(split), ray_dm.tensors(split)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
