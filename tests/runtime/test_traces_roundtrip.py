"""Round trips through TraceWriter and TraceDataset, and the writer's guarantees."""

from __future__ import annotations

import json

import numpy as np
import pytest

# the shared builders live next to this file (works with or without tests/__init__.py)
from helpers.traces import png_bytes, put_images, record_dict, simple_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ade_runtime.errors import InputError, TraceError
from ade_runtime.traces import Attempt, Cost, EditRecord, Judge, TraceDataset, TraceWriter, load_records


def test_write_read_round_trip_keeps_every_field(tmp_path):
    obj = record_dict("req-1", n_candidates=2, n_rounds=3, tokens=(0, 256))
    obj["extra_top"] = {"writer": "pipeline-x"}
    obj["attempts"][0]["extra_attempt"] = [1, 2]
    obj["attempts"][0]["judge"]["judge_model"] = "vlm"
    obj["attempts"][0]["cost"]["gpu"] = "a100"
    with TraceWriter(tmp_path) as w:
        put_images(tmp_path, obj)
        w.write(obj)
        rec = EditRecord.from_json(record_dict("req-2"))
        put_images(tmp_path, record_dict("req-2"))
        w.write(rec)
    records, rejects = load_records(tmp_path, images="decode")
    assert rejects == []
    assert [r.id for r in records] == ["req-1", "req-2"]
    assert records[0].to_json() == obj
    assert records[1] == rec
    assert records[0].root == tmp_path
    assert records[0].resolve(records[0].source_image).is_file()
    # the line on disk is exactly one JSON object per line
    lines = (tmp_path / "traces-00000.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert json.loads(lines[0]) == obj


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    instruction=st.text(min_size=1).filter(lambda s: s.strip()),
    prompt=st.text(),
    nfe=st.integers(0, 2**40),
    latency=st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    score=st.floats(0, 1),
    scores=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    meta=st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(), st.text(), st.booleans(), st.none()), max_size=4
    ),
)
def test_round_trip_property(tmp_path_factory, instruction, prompt, nfe, latency, score, scores, meta):
    root = tmp_path_factory.mktemp("rt")
    with TraceWriter(root, fsync=False) as w:
        src = w.write_image("src.png", png_bytes())
        rec = EditRecord(
            id="r",
            instruction=instruction,
            source_image=src,
            backbone="b",
            meta=meta,
            attempts=[Attempt(0, 0, 0, prompt, Cost(nfe, latency), None, scores, Judge(score, score > 0.5))],
        )
        w.write(rec)
    records, rejects = load_records(root)
    assert rejects == []
    assert records == [rec]


def test_rotation_and_reopen_never_overwrite(tmp_path):
    src = None
    with TraceWriter(tmp_path, max_shard_bytes=1500, fsync=False) as w:
        src = w.write_image("images/src.png", np.zeros((4, 4, 3), np.uint8))
        for i in range(12):
            w.write(simple_record(f"a{i}", src, None))
        first_shards = list(w.shards_written)
    assert len(first_shards) >= 3
    for shard in first_shards:
        assert shard.stat().st_size <= 1500
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    with TraceWriter(tmp_path, max_shard_bytes=1500) as w:
        w.write(simple_record("b0", src, None))
        assert w.shards_written[0].name not in before
        # ids already present in the directory stay unique across writer sessions
        with pytest.raises(InputError, match="a3"):
            w.write(simple_record("a3", src, None))
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    records = list(TraceDataset(tmp_path))
    assert [r.id for r in records] == [f"a{i}" for i in range(12)] + ["b0"]


def test_writer_refuses_invalid_records_naming_the_field(tmp_path):
    with TraceWriter(tmp_path) as w:
        src = w.write_image("s.png", png_bytes())
        bad = simple_record("x", src, None)
        bad.attempts[0].cost = Cost(nfe=-3)
        with pytest.raises(InputError, match=r"attempts\[0\]\.cost\.nfe"):
            w.write(bad)
        nan = simple_record("y", src, None)
        nan.attempts[0].scores = {"clip_t": float("nan")}
        with pytest.raises(InputError, match=r"scores\.clip_t.*NaN"):
            w.write(nan)
        with pytest.raises(InputError, match="missing_image"):
            w.write(simple_record("z", "images/none.png", None))
        with pytest.raises(InputError, match="absolute"):
            w.write(simple_record("z", str(tmp_path / "s.png"), None))
        w.write(simple_record("ok", src, None))
        with pytest.raises(InputError, match="duplicate_id"):
            w.write(simple_record("ok", src, None))
    records, rejects = load_records(tmp_path)
    assert [r.id for r in records] == ["ok"] and rejects == []
    with pytest.raises(TraceError, match="closed"):
        w.write(simple_record("late", src, None))


def test_write_image_inputs_and_atomicity(tmp_path):
    with TraceWriter(tmp_path) as w:
        assert w.write_image("a/b/../pil.webp", Image.new("RGB", (5, 3)), format="WEBP") == "a/pil.webp"
        assert w.write_image("gray.jpg", np.zeros((6, 7), np.uint8), format="jpg") == "gray.jpg"
        assert w.write_image("rgba.jpg", np.zeros((6, 7, 4), np.uint8), format="JPEG") == "rgba.jpg"
        assert w.write_image("raw.png", png_bytes((3, 2))) == "raw.png"
        with pytest.raises(InputError, match="PNG, JPEG or WebP"):
            w.write_image("bad.png", b"not an image at all")
        with pytest.raises(InputError, match="leaves the dataset"):
            w.write_image("../escape.png", png_bytes())
        with pytest.raises(InputError, match="absolute"):
            w.write_image("/tmp/abs.png", png_bytes())
        with pytest.raises(InputError, match="uint8"):
            w.write_image("f.png", np.zeros((4, 4), np.float32))
        with pytest.raises(InputError, match="format"):
            w.write_image("g.gif", png_bytes(), format="GIF")
    with Image.open(tmp_path / "a" / "pil.webp") as im:
        assert im.format == "WEBP" and im.size == (5, 3)
    with Image.open(tmp_path / "gray.jpg") as im:
        assert im.format == "JPEG" and im.size == (7, 6)
    assert not (tmp_path / "bad.png").exists()
    assert not (tmp_path.parent / "escape.png").exists()
    # no temporary files left behind
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_rewriting_an_image_refreshes_the_header_check(tmp_path):
    with TraceWriter(tmp_path) as w:
        (tmp_path / "s.png").write_bytes(b"garbage")
        with pytest.raises(InputError, match="corrupt_image"):
            w.write(simple_record("r", "s.png", None))
        w.write_image("s.png", png_bytes())
        w.write(simple_record("r", "s.png", None))
    assert [r.id for r in TraceDataset(tmp_path)] == ["r"]


def test_writer_argument_checks(tmp_path):
    with pytest.raises(InputError, match="prefix"):
        TraceWriter(tmp_path, prefix="../x")
    with pytest.raises(InputError, match="max_shard_bytes"):
        TraceWriter(tmp_path, max_shard_bytes=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceError):
        TraceWriter(tmp_path / "file")
