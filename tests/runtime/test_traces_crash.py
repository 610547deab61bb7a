"""A TraceWriter killed with SIGKILL leaves a dataset that validates except its last, truncated line.

The child process writes real records with the real writer, then starts a 3 MiB record that the
writer sends in 1 MiB chunks; ``os.write`` (not our code) is wrapped in the child so that it stops
right after the first chunk reached the file and tells the parent, which kills it: deterministic,
no sleeps in the parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import TESTS
from helpers.traces import simple_record

from ade_runtime.traces import TraceDataset, TraceWriter, load_records

CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[2])
    from helpers.traces import png_bytes, simple_record
    from ade_runtime.traces import TraceWriter

    root, mode = sys.argv[1], sys.argv[3]
    with TraceWriter(root) as w:
        src = w.write_image("images/source.png", png_bytes())
        for i in range(5):
            w.write(simple_record(f"r{i}", src, None))
            if mode == "between":
                print(f"wrote r{i}", flush=True)
        if mode == "between":
            time.sleep(60)  # killed here by the parent, between two records
        big = simple_record("big", src, None)
        big.meta["blob"] = "x" * (3 << 20)
        real_write = os.write

        def write_then_stop(fd, data):
            n = real_write(fd, data)  # the first chunk of the big record reaches the shard
            print("partial", flush=True)
            time.sleep(60)  # killed here by the parent, mid-record
            return n

        os.write = write_then_stop
        w.write(big)
    """
)


def run_child_until(root: Path, mode: str, marker: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(TESTS), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == marker:
                break
        else:
            pytest.fail(f"child ended before {marker!r}: {proc.stderr.read()}")  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_sigkill_mid_record_leaves_valid_lines_and_a_truncated_last_line(tmp_path):
    run_child_until(tmp_path, "mid", "partial")
    shard = tmp_path / "traces-00000.jsonl"
    size = shard.stat().st_size
    assert (1 << 20) < size < (3 << 20)  # the big record is on disk, cut
    records, rejects = load_records(tmp_path, images="decode")
    assert [r.id for r in records] == [f"r{i}" for i in range(5)]
    assert [(r.shard, r.line, r.reason) for r in rejects] == [("traces-00000.jsonl", 6, "truncated_line")]
    res = subprocess.run(
        [str(Path(sys.executable).with_name("ade-traces")), "validate", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    summary = json.loads(res.stdout.splitlines()[-1])
    assert (summary["valid"], summary["rejected"], summary["reasons"]) == (5, 1, {"truncated_line": 1})
    # reopening continues in a new shard and never touches the damaged one
    with TraceWriter(tmp_path) as w:
        w.write(simple_record("after-crash", "images/source.png", None))
    assert shard.stat().st_size == size
    ds = TraceDataset(tmp_path)
    assert [r.id for r in ds] == [f"r{i}" for i in range(5)] + ["after-crash"]
    assert [r.reason for r in ds.rejects] == ["truncated_line"]


def test_sigkill_between_records_leaves_a_fully_valid_dataset(tmp_path):
    run_child_until(tmp_path, "between", "wrote r4")
    records, rejects = load_records(tmp_path, images="decode")
    assert [r.id for r in records] == [f"r{i}" for i in range(5)] and rejects == []
    assert not list(tmp_path.rglob("*.tmp"))


FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from helpers.traces import png_bytes, simple_record
    from ade_runtime.errors import TraceError
    from ade_runtime.traces import TraceWriter

    with TraceWriter(sys.argv[1]) as w:
        src = w.write_image("images/source.png", png_bytes())
        # a real short write: files may not grow past 3000 bytes (EFBIG instead of SIGXFSZ)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
        i = 0
        while True:
            try:
                w.write(simple_record(f"r{i}", src, None))
            except TraceError as exc:
                print("failed", i, exc)
                break
            i += 1
        w.write(simple_record(f"r{i}", src, None))  # the same id again: the failed record did not take it
        print("after", i)
    """
)


def test_failed_write_ends_the_shard_and_the_next_record_starts_clean(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    failed = int(res.stdout.split()[1])
    assert failed >= 2 and "truncated_line" in res.stdout
    ds = TraceDataset(tmp_path)
    assert [r.id for r in ds] == [f"r{i}" for i in range(failed + 1)]
    assert [(r.shard, r.line, r.reason) for r in ds.rejects] == [
        ("traces-00000.jsonl", failed + 1, "truncated_line")
    ]
    assert [r.root for r in ds][-1] == tmp_path and (tmp_path / "traces-00001.jsonl").exists()
