"""TraceDataset: line accounting, shard discovery, gzip, and never raising on content (hypothesis)."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest

# the shared builders live next to this file (works with or without tests/__init__.py)
from helpers.traces import put_images, record_dict, write_shard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ade_runtime.errors import TraceError
from ade_runtime.traces import EditRecord, Reject, TraceDataset, load_records, read_traces


def n_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def line(rid: str) -> bytes:
    return json.dumps(record_dict(rid, n_candidates=1, n_rounds=2)).encode()


def test_line_level_reasons(tmp_path):
    good = line("ok-1")
    data = b"\n".join(
        [
            good,
            b"",  # blank
            b"   \t",  # whitespace only
            b"\xff\xfe not utf-8",
            b'{"format": "ade-trace/1", "id": ',  # broken JSON in the middle of the shard
            b'{"id": "a", "id": "b"}',
            b"[" * 100_000,  # nesting deeper than the parser's recursion limit
            b"9" * 5000,  # integer longer than Python's digit limit
            line("ok-2"),
            b'{"format": "ade-trace/1", "id": "cut", "instr',  # truncated last line
        ]
    )
    (tmp_path / "s.jsonl").write_bytes(data)
    ds = TraceDataset(tmp_path, images="none")
    items = list(ds.scan())
    assert len(items) == n_lines(data) == 10
    assert [r.id for r in items if isinstance(r, EditRecord)] == ["ok-1", "ok-2"]
    assert [(r.line, r.reason) for r in ds.rejects] == [
        (2, "empty_line"),
        (3, "empty_line"),
        (4, "invalid_utf8"),
        (5, "invalid_json"),
        (6, "duplicate_key"),
        (7, "invalid_json"),
        (8, "invalid_json"),
        (10, "truncated_line"),
    ]
    assert ds.rejects[4].field == "id"
    assert ds.counts == {"lines": 10, "valid": 2, "rejected": 8}
    assert all(r.shard == "s.jsonl" for r in ds.rejects)


def test_last_line_without_newline_is_valid_when_it_parses_and_cut_utf8_is_truncated(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(line("x") + b"\n" + line("y"))
    # a writer killed in the middle of a multi-byte character
    (tmp_path / "b.jsonl").write_bytes(line("z") + b'\n{"id": "caf\xc3')
    records, rejects = load_records(tmp_path, images="none")
    assert [r.id for r in records] == ["x", "y", "z"]
    assert [(r.shard, r.line, r.reason) for r in rejects] == [("b.jsonl", 2, "truncated_line")]


def test_bom_and_crlf_are_tolerated(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + line("x") + b"\r\n" + line("y") + b"\r\n")
    records, rejects = load_records(tmp_path, images="none")
    assert [r.id for r in records] == ["x", "y"] and rejects == []


def test_long_line_is_rejected_without_holding_it(tmp_path):
    cap = 1 << 20
    huge = b'{"id": "' + b"x" * (20 * cap) + b'"}'
    (tmp_path / "a.jsonl").write_bytes(line("before") + b"\n" + huge + b"\n" + line("after") + b"\n" + huge)
    tracemalloc.start()
    try:
        ds = TraceDataset(tmp_path, images="none", max_line_bytes=cap)
        items = list(ds.scan())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * cap  # a 20 MiB line never sits in memory whole
    assert [getattr(i, "id", None) for i in items] == ["before", None, "after", None]
    assert [(r.line, r.reason) for r in ds.rejects] == [(2, "line_too_long"), (4, "line_too_long")]


def test_default_cap_is_16_mib(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"[" + b"0," * (9 << 20) + b"0]\n" + line("ok") + b"\n")
    records, rejects = load_records(tmp_path, images="none")
    assert [r.id for r in records] == ["ok"]
    assert [r.reason for r in rejects] == ["line_too_long"]


def test_nested_shards_are_read_in_sorted_order_with_gzip(tmp_path):
    for rel, rid in [("b/2.jsonl", "b2"), ("a.jsonl.gz", "a"), ("b/1.jsonl.gz", "b1"), ("c.jsonl", "c")]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = line(rid) + b"\n"
        p.write_bytes(gzip.compress(data) if rel.endswith(".gz") else data)
    (tmp_path / "notes.txt").write_text("not a shard")
    (tmp_path / "x.json").write_text("{}")
    ds = TraceDataset(tmp_path, images="none")
    assert [p.relative_to(tmp_path).as_posix() for p in ds.shards] == [
        "a.jsonl.gz",
        "b/1.jsonl.gz",
        "b/2.jsonl",
        "c.jsonl",
    ]
    assert [r.id for r in ds] == ["a", "b1", "b2", "c"]
    assert [r.root for r in read_traces(tmp_path, images="none")][1] == tmp_path / "b"


def test_truncated_and_corrupt_gzip_keep_the_lines_before(tmp_path):
    body = b"".join(line(f"r{i}") + b"\n" for i in range(200))
    gz = gzip.compress(body, mtime=0)
    (tmp_path / "a.jsonl.gz").write_bytes(gz[: len(gz) - 40])
    (tmp_path / "b.jsonl.gz").write_bytes(b"this is not gzip\n")
    seen = []
    records = list(read_traces(tmp_path, images="none", on_reject=seen.append))
    assert 0 < len(records) < 200
    assert [r.id for r in records] == [f"r{i}" for i in range(len(records))]
    assert [(r.shard, r.reason) for r in seen] == [
        ("a.jsonl.gz", "truncated_gzip"),
        ("b.jsonl.gz", "corrupt_shard"),
    ]
    assert seen[0].line == len(records) + 1  # the line that was being read when the stream ended
    assert seen[1].line == 1


@pytest.mark.parametrize("setup", ["missing", "file", "empty", "only_other_files"])
def test_unusable_roots_raise_trace_error(tmp_path, setup):
    root = tmp_path / "ds"
    if setup == "file":
        root.write_text("x")
    elif setup == "empty":
        root.mkdir()
    elif setup == "only_other_files":
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "a.json").write_text("{}")
    with pytest.raises(TraceError, match=str(root)):
        TraceDataset(root)
    with pytest.raises(ValueError, match="images"):
        TraceDataset(tmp_path, images="full")


def test_fifo_named_like_a_shard_is_rejected_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    (tmp_path / "real.jsonl").write_bytes(line("x") + b"\n")
    records, rejects = load_records(tmp_path, images="none")
    assert [r.id for r in records] == ["x"]
    assert [(r.shard, r.reason) for r in rejects] == [("pipe.jsonl", "corrupt_shard")]


def test_keep_rejects_false_still_yields_and_counts(tmp_path):
    write_shard(tmp_path, ["junk", "more junk"])
    ds = TraceDataset(tmp_path, images="none", keep_rejects=False)
    items = list(ds.scan())
    assert [i.reason for i in items] == ["invalid_json", "invalid_json"]
    assert ds.rejects == [] and ds.counts["rejected"] == 2


def test_iteration_resets_rejects(tmp_path):
    put_images(tmp_path, record_dict("a"))
    write_shard(tmp_path, [record_dict("a"), "oops"])
    ds = TraceDataset(tmp_path)
    assert [r.id for r in ds] == ["a"] and len(ds.rejects) == 1
    assert [r.id for r in ds] == ["a"] and len(ds.rejects) == 1  # second pass: ids are not "duplicates"


# -- properties ----------------------------------------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
chunks = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"\n", b"\r\n", b"{", b"}", b'"', b"NaN", b"\xff", b"\xc3", b"\x00", b"[" * 50]),
    st.builds(line, st.sampled_from(["p", "q", "r"])),
)


def scan_bytes(data: bytes, name: str = "s.jsonl", cap: int = 256) -> tuple[list, TraceDataset]:
    with tempfile.TemporaryDirectory() as d:
        Path(d, name).write_bytes(data)
        ds = TraceDataset(d, images="header", max_line_bytes=cap)
        return list(ds.scan()), ds


@SETTINGS
@given(st.lists(chunks, max_size=12).map(b"".join))
def test_reader_accounts_for_every_line_of_arbitrary_bytes(data):
    items, ds = scan_bytes(data, cap=4096)
    assert len(items) == n_lines(data)
    assert ds.counts["valid"] + ds.counts["rejected"] == ds.counts["lines"] == n_lines(data)
    assert all(isinstance(i, (EditRecord, Reject)) for i in items)


@SETTINGS
@given(st.binary(max_size=600))
def test_reader_never_raises_on_raw_binary(data):
    items, ds = scan_bytes(data, cap=64)
    assert len(items) == n_lines(data) == len(ds.rejects) + sum(isinstance(i, EditRecord) for i in items)


@SETTINGS
@given(st.lists(chunks, max_size=8).map(b"".join), st.integers(0, 10_000))
def test_gzip_shards_whole_or_cut_never_raise(data, cut):
    gz = gzip.compress(data, mtime=0)
    items, _ = scan_bytes(gz, "s.jsonl.gz", cap=4096)
    assert len(items) == n_lines(data)
    cut_at = cut % (len(gz) + 1)
    items, ds = scan_bytes(gz[:cut_at], "s.jsonl.gz", cap=4096)
    assert len(items) <= n_lines(data) + 1
    if 0 < cut_at < len(gz):
        assert ds.rejects and ds.rejects[-1].reason in ("truncated_gzip", "corrupt_shard", "truncated_line")


@SETTINGS
@given(st.binary(min_size=1, max_size=300))
def test_gzip_of_garbage_never_raises(data):
    items, ds = scan_bytes(data, "s.jsonl.gz")
    assert all(isinstance(i, (EditRecord, Reject)) for i in items)
