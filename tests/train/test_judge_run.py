"""End to end: strip the judges of a testbed dataset, judge it again, compare; kill and resume.

The "logged runtime traces" are the testbed fixture (``tests/fixtures/testbed_small``) with every
judge removed, written through ``TraceWriter``. ``ade-judge --judge testbed`` must give back the
original labels for every attempt that has an image. The kill test runs ``ade-judge`` in a
subprocess against a loopback API judge that holds one request open, SIGKILLs it there (so the
kill always lands mid-run), resumes, and checks the journal and the output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import FIXTURES
from helpers.traces import strip_judges
from PIL import Image

from ade_runtime.traces import TraceDataset, TraceWriter
from ade_train.judge import read_journal
from ade_train.judge.cli import main

FIXTURE = FIXTURES / "testbed_small"


@pytest.fixture(scope="module")
def labelled() -> Path:
    """The committed testbed fixture (40 requests, 960 attempts, all judged)."""
    assert FIXTURE.is_dir(), f"missing fixture {FIXTURE}"
    return FIXTURE


def _by_id(root: Path) -> dict:
    ds = TraceDataset(root)
    recs = {r.id: r for r in ds}
    assert ds.rejects == []
    return recs


def test_testbed_judge_restores_the_original_labels(labelled, tmp_path, capsys):
    logged, out = tmp_path / "logged", tmp_path / "out"
    strip_judges(labelled, logged)
    assert (
        main(["--traces", str(logged), "--out", str(out), "--judge", "testbed", "--no-progress", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    orig, new = _by_id(labelled), _by_id(out)
    assert orig.keys() == new.keys()
    with_image = without = 0
    for rid, rec in orig.items():
        for key, att in rec.attempt_grid().items():
            got = new[rid].attempt_grid()[key]
            if att.image is None:
                assert got.judge is None  # cannot be judged from pixels: left null, counted
                without += 1
            else:
                assert got.judge == att.judge and got.judge.flaws == att.judge.flaws
                with_image += 1
            assert (got.prompt, got.cost, got.scores) == (att.prompt, att.cost, att.scores)
    assert with_image > 0
    assert summary["labelled_by_this_judge"] == with_image and summary["no_image"] == without
    assert summary["cost"]["judge_calls"] == with_image and summary["rejects"] == 0
    # images are hard-linked, never rewritten
    src_img = logged / next(iter(new.values())).source_image
    assert os.path.samefile(src_img, out / next(iter(new.values())).source_image)
    # the output is a finished dataset only: no work directory left behind, the input untouched
    assert not (tmp_path / "out.partial").exists()
    assert all(a.judge is None for r in TraceDataset(logged) for a in r.attempts)
    # idempotent: a second run finds OUT complete and judges nothing
    before = (out / "judge-journal.ndjson").read_bytes()
    assert main(["--traces", str(logged), "--out", str(out), "--judge", "testbed", "--no-progress"]) == 0
    assert (out / "judge-journal.ndjson").read_bytes() == before


def test_rejects_are_reported_not_fatal_and_existing_judges_kept(labelled, tmp_path, capsys):
    logged, out = tmp_path / "logged", tmp_path / "out"
    shutil.copytree(labelled, logged)  # fully labelled: everything is kept as it is
    shard = sorted(logged.glob("*.jsonl"))[0]
    with shard.open("a") as fh:
        fh.write('{"format": "ade-trace/1", "id": "broken", "instruction": ""}\n')
    assert (
        main(["--traces", str(logged), "--out", str(out), "--judge", "testbed", "--no-progress", "--json"])
        == 0
    )
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["rejects"] == 1 and "rejected" in cap.err
    assert summary["labelled_by_this_judge"] == 0 and summary["cost"]["judge_calls"] == 0
    orig, new = _by_id(labelled), _by_id(out)
    assert all(
        new[k].attempt_grid()[t].judge == a.judge
        for k, r in orig.items()
        for t, a in r.attempt_grid().items()
    )


def test_limit_and_usage_errors(labelled, tmp_path, capsys):
    logged = tmp_path / "logged"
    strip_judges(labelled, logged)
    assert (
        main(
            [
                "--traces",
                str(logged),
                "--out",
                str(tmp_path / "two"),
                "--judge",
                "testbed",
                "--limit",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(list(TraceDataset(tmp_path / "two"))) == 2
    capsys.readouterr()
    assert main(["--traces", str(logged), "--out", str(tmp_path / "x"), "--judge", "gpt5"]) == 2
    assert "not a judge spec" in capsys.readouterr().err
    assert main(["--traces", str(logged), "--out", str(logged / "inside"), "--judge", "testbed"]) == 2
    (tmp_path / "taken").mkdir()
    assert main(["--traces", str(logged), "--out", str(tmp_path / "taken"), "--judge", "testbed"]) == 2
    assert "exists" in capsys.readouterr().err


# ---- kill and resume ----------------------------------------------------------------------------

HOLD_AT = 5  # the server holds the 5th SC request open: the client is killed while waiting for it


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        n_images = sum(c["type"] == "image_url" for c in content)
        text = next(c["text"] for c in content if c["type"] == "text")
        with srv.lock:
            srv.count += 1
            if n_images == 2:
                srv.sc += 1
                nth_sc = srv.sc
        if n_images == 2 and srv.hold and "object 0 " in text:
            data = b'{"error": "rejected"}'  # req-000 fails with HTTP 400 in the first run only
            self.send_response(400)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if n_images == 2 and srv.hold and nth_sc == HOLD_AT:
            srv.holding.set()
            srv.release.wait(30)
            return
        # deterministic answers derived from the instruction, so two runs label identically
        h = sum(map(ord, text)) % 7
        answer = {"score": [3 + h, 9]} if n_images == 2 else {"score": [8, 9]}
        data = json.dumps({"choices": [{"message": {"content": json.dumps(answer)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(hold: bool):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads, srv.block_on_close = True, False
    srv.lock, srv.count, srv.sc, srv.hold = threading.Lock(), 0, 0, hold
    srv.holding, srv.release = threading.Event(), threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _small_dataset(root: Path, n: int) -> None:
    with TraceWriter(root) as w:
        from ade_runtime.traces import EditRecord
        from ade_runtime.traces.records import Attempt, Cost

        for i in range(n):
            rid = f"req-{i:03d}"
            src = w.write_image(f"images/{rid}/s.png", Image.new("RGB", (16, 16), (i, 0, 0)))
            atts = [
                Attempt(
                    c,
                    0,
                    0,
                    f"edit {i}",
                    Cost(4),
                    image=w.write_image(f"images/{rid}/c{c}.png", Image.new("RGB", (16, 16), (0, c, i))),
                )
                for c in range(2)
            ]
            w.write(EditRecord(rid, f"make object {i} number {i * 7} blue", src, "flux-kontext", atts))


def _cmd(traces, out, url):
    return [
        sys.executable,
        "-m",
        "ade_train.judge.cli",
        "--traces",
        str(traces),
        "--out",
        str(out),
        "--judge",
        "openai:m",
        "--base-url",
        url,
        "--rps",
        "0",
        "--batch-size",
        "1",
        "--no-progress",
        "--json",
    ]


def test_sigkill_midway_then_resume_judges_each_attempt_once(tmp_path):
    traces, out, ref_out = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    _small_dataset(traces, 6)
    env = {**os.environ, "OPENAI_API_KEY": ""}
    srv = _serve(hold=True)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        proc = subprocess.Popen(
            _cmd(traces, out, url), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert srv.holding.wait(60), proc.stderr.read() if proc.poll() is not None else "no 5th request"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
    partial = tmp_path / "out.partial"
    assert not out.exists() and partial.is_dir()  # a killed run never leaves a half-written OUT
    done_before = [e for e in read_journal(partial / "judge-journal.ndjson") if e["kind"] != "header"]
    assert len(done_before) == HOLD_AT - 1
    srv2 = _serve(hold=False)
    try:
        url = f"http://127.0.0.1:{srv2.server_address[1]}/v1"
        res = subprocess.run(_cmd(traces, out, url), env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        resumed_requests = srv2.count
        res_ref = subprocess.run(
            _cmd(traces, ref_out, url), env=env, capture_output=True, text=True, timeout=120
        )
        assert res_ref.returncode == 0, res_ref.stderr
    finally:
        srv2.shutdown()
        srv2.server_close()
    entries = [e for e in read_journal(out / "judge-journal.ndjson") if e["kind"] != "header"]
    assert entries[: HOLD_AT - 1] == done_before  # the resumed run appended, never rewrote
    failed = [(e["ref"]["id"], e["ref"]["candidate"]) for e in done_before if e["kind"] == "failure"]
    assert failed == [("req-000", 0), ("req-000", 1)] and {e["reason"] for e in done_before[:2]} == {
        "http_error"
    }
    results = [(e["ref"]["id"], e["ref"]["candidate"]) for e in entries if e["kind"] == "result"]
    assert len(results) == len(set(results)) == 12  # every attempt labelled exactly once
    # the resumed run judged the 2 transient failures again and the attempts never reached, nothing else
    todo = 12 - (HOLD_AT - 1) + len(failed)
    assert summary["resumed_from_journal"] == HOLD_AT - 1 and summary["this_run"]["judged"] == todo
    assert resumed_requests == 2 * todo  # SC + PQ per attempt judged in the resumed run
    assert summary["cost"]["judge_calls"] == 2 * 12 + len(failed)  # the two HTTP 400 calls cost too
    assert _by_id(out) == _by_id(ref_out)  # same labels as an uninterrupted run


def test_wrong_judge_for_the_traces_aborts_early_and_resumes_later(tmp_path, capsys):
    traces, out = tmp_path / "in", tmp_path / "out"
    _small_dataset(traces, 6)  # plain PNGs: the testbed judge cannot read a scene from them
    code = main(
        [
            "--traces",
            str(traces),
            "--out",
            str(out),
            "--judge",
            "testbed",
            "--batch-size",
            "1",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "first 3 batches" in err and "testbed" in err
    journal = read_journal(tmp_path / "out.partial" / "judge-journal.ndjson")
    assert [e["reason"] for e in journal[1:]] == ["judge_error"] * 3 and not out.exists()
    # the unfinished run belongs to the testbed judge: another judge must not silently mix in
    labels = tmp_path / "l.csv"
    labels.write_text(
        "id,candidate,round,reasoning_tokens,pass\n"
        + "".join(f"req-{i:03d},{c},0,0,true\n" for i in range(6) for c in range(2))
    )
    code = main(["--traces", str(traces), "--out", str(out), "--judge", f"human:{labels}", "--no-progress"])
    assert code == 2 and "--restart" in capsys.readouterr().err
    code = main(
        [
            "--traces",
            str(traces),
            "--out",
            str(out),
            "--judge",
            f"human:{labels}",
            "--restart",
            "--no-progress",
        ]
    )
    assert code == 0 and all(a.judge.passed for r in TraceDataset(out) for a in r.attempts)
