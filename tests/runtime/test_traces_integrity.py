"""Trace integrity (issue #24, item 2): a record is all or nothing, ids are unique in the dataset
(across restarts and across processes writing into one directory) and ``validate --decode``
detects an image replaced after its record was written.

Black-box: real writer processes (multiprocessing, spawn), the writer API and the real
``ade-traces`` CLI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.traces import png_bytes, record_dict
from helpers.writers import claim_and_die, staged, write_ids, write_then_die

from ade_runtime.backbones.base import EditRequest
from ade_runtime.traces import (
    REASONS,
    DuplicateRecordId,
    RecordLimits,
    RecordRefused,
    TraceDataset,
    TraceWriter,
    load_records,
)
from ade_runtime.traces.claims import CLAIMS_DIR
from ade_runtime.traces.serving import SERVE_LIMITS, claim_request, image_dir

EXE = Path(sys.executable).with_name("ade-traces")
SPAWN = multiprocessing.get_context("spawn")


def validate(root: Path, *flags: str) -> tuple[int, dict, list[dict]]:
    report = root.parent / f"{root.name}-rejects.jsonl"
    res = subprocess.run(
        [str(EXE), "validate", str(root), "--quiet", "--rejects", str(report), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode in (0, 1), res.stderr
    rejects = [json.loads(line) for line in report.read_text().splitlines()]
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1]), rejects


def files(root: Path) -> set[str]:
    """Every file of the dataset except the writer's own id claims."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and CLAIMS_DIR not in p.relative_to(root).parts
    }


def images_of(root: Path) -> set[str]:
    return {f for f in files(root) if f.startswith("images/")}


def claims(root: Path) -> list[str]:
    d = root / CLAIMS_DIR
    return sorted(p.name for p in d.iterdir() if p.is_file() and len(p.name) == 64) if d.is_dir() else []


def run_in_process(target, *args) -> None:
    p = SPAWN.Process(target=target, args=args)
    p.start()
    p.join(120)
    assert p.exitcode == 0


# -- id reuse --------------------------------------------------------------------------------------


def test_id_reuse_after_a_restart_is_refused_and_the_first_record_stays_intact(tmp_path):
    with SPAWN.Pool(1) as pool:  # the first "server": its own process, then gone
        assert pool.apply(write_ids, (str(tmp_path), ["r0", "r1"], 10)) == {
            "written": ["r0", "r1"],
            "refused": [],
        }
    before = {rel: (tmp_path / rel).read_bytes() for rel in files(tmp_path)}
    with SPAWN.Pool(1) as pool:  # restarted: a new process reuses r1 with other images
        assert pool.apply(write_ids, (str(tmp_path), ["r1", "r2"], 200)) == {
            "written": ["r2"],
            "refused": ["r1"],
        }
    assert {rel: (tmp_path / rel).read_bytes() for rel in before} == before  # nothing overwritten
    code, summary, rejects = validate(tmp_path, "--decode")
    assert (code, summary["valid"], summary["rejected"], rejects) == (0, 3, 0, [])
    records, _ = load_records(tmp_path, images="decode")
    assert sorted(r.id for r in records) == ["r0", "r1", "r2"]


def test_two_processes_writing_one_dataset_never_share_an_id(tmp_path):
    ids = [f"q{i}" for i in range(12)]
    barrier = SPAWN.Manager().Barrier(2)  # both writers are open before either writes
    with SPAWN.Pool(2) as pool:
        jobs = [pool.apply_async(write_ids, (str(tmp_path), ids, v, barrier)) for v in (10, 200)]
        low, high = (j.get(timeout=120) for j in jobs)
    assert sorted(low["written"] + high["written"]) == sorted(ids)  # each id written exactly once
    assert sorted(low["refused"] + high["refused"]) == sorted(ids)
    code, summary, rejects = validate(tmp_path, "--decode")
    assert (code, summary["valid"], summary["reasons"]) == (0, 12, {})
    named = set()
    for rec in TraceDataset(tmp_path, images="decode"):
        named |= {rec.source_image} | {att.image for att in rec.attempts}
        value = 10 if rec.id in low["written"] else 200
        assert (tmp_path / rec.source_image).read_bytes() == png_bytes(value=value)
    assert {f for f in files(tmp_path) if f.startswith("images/")} == named  # no orphan image


def test_a_claim_left_by_a_crashed_writer_is_released_and_the_id_written(tmp_path):
    TraceWriter(tmp_path).close()
    run_in_process(claim_and_die, str(tmp_path), "lost")  # claimed, never written, never closed
    assert len(claims(tmp_path)) == 1
    obj, images = staged("lost", 30)
    with TraceWriter(tmp_path) as w:  # a writer that opens later releases it at once
        assert w.stale_claims_released == 1
        w.write(obj, images=images)
    # a writer open while the other one crashes gets the id back when it needs it
    with TraceWriter(tmp_path) as w:
        run_in_process(claim_and_die, str(tmp_path), "lost-2")
        obj, images = staged("lost-2", 40)
        w.write(obj, images=images)
        assert w.stale_claims_released == 1
        with pytest.raises(DuplicateRecordId, match="already used"):
            w.claim("lost")
    code, summary, _ = validate(tmp_path, "--decode")
    assert (code, summary["valid"]) == (0, 2)


def test_a_live_claim_is_never_taken_and_released_claims_free_the_id(tmp_path):
    with TraceWriter(tmp_path) as first, TraceWriter(tmp_path) as second:
        first.claim("busy")
        obj, images = staged("busy", 1)
        with pytest.raises(DuplicateRecordId, match="being written by another trace writer"):
            second.write(obj, images=images)
        assert files(tmp_path) == set()  # the refused write left nothing
        first.release("busy")
        second.write(obj, images=images)
        with pytest.raises(DuplicateRecordId) as info:
            first.claim("busy")
        assert (info.value.reason, info.value.field) == ("duplicate_id", "id")
    assert validate(tmp_path)[0] == 0


def test_a_request_claim_survives_a_restart_and_close_releases_unwritten_ones(tmp_path):
    image = np.zeros((16, 16, 3), np.uint8)
    req = EditRequest(image=_pil(image), instruction="make it red", id="req-7", category="color")
    with TraceWriter(tmp_path, limits=SERVE_LIMITS) as w:
        assert claim_request(w, req) == "req-7"
        with pytest.raises(DuplicateRecordId):
            claim_request(w, req)
    with TraceWriter(tmp_path, limits=SERVE_LIMITS) as w:  # closed without a record: the id is free
        claim_request(w, req)
        w.release("req-7")
    assert claims(tmp_path) == [] and files(tmp_path) == set()


# -- bounded, valid fields before anything is written ----------------------------------------------


@pytest.mark.parametrize(
    ("category", "limits", "reason", "field"),
    [
        ("bad \ud800 surrogate", None, "invalid_unicode", "category"),
        ("x" * (30 << 20), SERVE_LIMITS, "too_long", "category"),
        ("x" * (30 << 20), None, "record_too_large", None),  # over the reader's line cap
    ],
    ids=["lone-surrogate", "30MB-serve-limits", "30MB-default-limits"],
)
def test_a_refused_record_leaves_no_file_and_no_claim(tmp_path, category, limits, reason, field):
    obj, images = staged("r0", 5)
    obj["category"] = category
    with TraceWriter(tmp_path, limits=limits) as w:
        with pytest.raises(RecordRefused) as info:
            w.write(obj, images=images)
        assert (info.value.reason, info.value.field) == (reason, field)
        assert files(tmp_path) == set() and claims(tmp_path) == []
        obj["category"] = "color"  # the id was not reserved by the refusal
        w.write(obj, images=images)
    assert validate(tmp_path, "--decode")[1]["valid"] == 1


def test_serve_preflight_refuses_before_any_work(tmp_path):
    big = EditRequest(image=_pil(np.zeros((8, 8, 3), np.uint8)), instruction="x", id="a", category="c" * 300)
    bad = EditRequest(image=big.image, instruction="fine", id="b", category="bad \udcff")
    with TraceWriter(tmp_path, limits=SERVE_LIMITS) as w:
        with pytest.raises(RecordRefused) as info:
            claim_request(w, big)
        assert (info.value.reason, info.value.field) == ("too_long", "category")
        with pytest.raises(RecordRefused) as info:
            claim_request(w, bad)
        assert (info.value.reason, info.value.field) == ("invalid_unicode", "category")
        assert claims(tmp_path) == [] and files(tmp_path) == set()


def test_an_image_path_taken_by_other_content_refuses_the_whole_record(tmp_path):
    other = tmp_path / "images" / "r0" / "c1_r1_t0.png"
    other.parent.mkdir(parents=True)
    other.write_bytes(png_bytes(value=99))  # e.g. an image another record names
    obj, images = staged("r0", 5)
    with TraceWriter(tmp_path) as w:
        with pytest.raises(RecordRefused) as info:
            w.write(obj, images=images)
        assert (info.value.reason, info.value.field) == ("image_exists", "attempts[3].image")
        assert files(tmp_path) == {"images/r0/c1_r1_t0.png"} and claims(tmp_path) == []
        assert other.read_bytes() == png_bytes(value=99)
        other.write_bytes(png_bytes(value=5))  # the very same bytes (a retry): accepted
        w.write(obj, images=images)
    assert validate(tmp_path, "--decode")[0] == 0


def test_images_must_be_named_by_the_record_and_paths_stay_inside(tmp_path):
    obj, images = staged("r0", 5)
    with TraceWriter(tmp_path) as w:
        for extra, reason in [
            ({"images/stray.png": png_bytes()}, "image_not_named"),
            ({"../out.png": png_bytes()}, "path_escape"),
            ({"images/./r0/source.png": png_bytes()}, "bad_path"),
        ]:
            with pytest.raises(RecordRefused) as info:
                w.write(obj, images={**images, **extra})
            assert info.value.reason == reason
        with pytest.raises(RecordRefused) as info:
            w.write(obj, images={**images, obj["source_image"]: b"not an image"})
        assert (info.value.reason, info.value.field) == ("bad_image", "source_image")
    assert files(tmp_path) == set() and claims(tmp_path) == []


def test_record_limits_are_checked_configs():
    with pytest.raises(ValueError, match="max_id_chars"):
        RecordLimits(max_id_chars=0)
    with pytest.raises(ValueError, match="line cap"):
        RecordLimits(max_record_bytes=1 << 30)


def test_image_folder_of_unsafe_ids_stays_inside_and_apart():
    assert image_dir("req-1") == "images/req-1"
    for rid in ("../../etc", "a/b", "x" * 300, ".."):
        d = image_dir(rid)
        assert d.count("/") == 1 and ".." not in d.split("/") and len(d) < 80
    assert image_dir("a/b") != image_dir("a_b")


# -- an image replaced after its record was written ------------------------------------------------


@pytest.mark.parametrize("which", ["source_image", "attempts[1].image"])
def test_validate_decode_reports_a_replaced_image_naming_the_field(tmp_path, which):
    obj, images = staged("r0", 5)
    with TraceWriter(tmp_path) as w:
        w.write(obj, images=images)
        w.write(*staged("r1", 6))
    rel = obj["source_image"] if which == "source_image" else obj["attempts"][1]["image"]
    (tmp_path / rel).write_bytes(png_bytes(value=77))  # still a valid PNG, just not the logged one
    code, summary, rejects = validate(tmp_path, "--decode")
    assert (code, summary["valid"], summary["reasons"]) == (1, 1, {"image_hash_mismatch": 1})
    assert [(r["id"], r["reason"], r["field"]) for r in rejects] == [("r0", "image_hash_mismatch", which)]
    assert rel in rejects[0]["message"] and "image_hash_mismatch" in REASONS
    assert validate(tmp_path)[0] == 0  # header checks do not hash (documented)


def test_records_without_hashes_or_with_malformed_ones_stay_valid(tmp_path):
    with TraceWriter(tmp_path) as w:
        obj = record_dict("old")  # the two-step way (and other teams' writers): no hashes
        for rel in [obj["source_image"]] + [a["image"] for a in obj["attempts"]]:
            w.write_image(rel, png_bytes())
        w.write(obj)
        other = record_dict("odd")
        other["meta"]["ade"] = {"image_sha256": {"images/odd/source.png": "not-a-hash", "x.png": 3}}
        for rel in [other["source_image"]] + [a["image"] for a in other["attempts"]]:
            w.write_image(rel, png_bytes())
        w.write(other)
    assert "image_sha256" not in json.dumps(record_dict("old"))
    code, summary, _ = validate(tmp_path, "--decode")
    assert (code, summary["valid"]) == (0, 2)


def test_collect_style_rewrite_keeps_hashes_valid(tmp_path):
    """A record read back and written again (its images already in place) keeps verifying."""
    with TraceWriter(tmp_path) as w:
        w.write(*staged("r0", 5))
    rec = next(iter(TraceDataset(tmp_path)))
    rec.id = "r0-copy"
    with TraceWriter(tmp_path) as w:
        w.write(rec)
    assert validate(tmp_path, "--decode")[1]["valid"] == 2
    assert sorted(os.listdir(tmp_path / "images")) == ["r0"]


def _pil(arr):
    from PIL import Image

    return Image.fromarray(arr)


# -- resumable collection with claims --------------------------------------------------------------


def test_collect_resumes_after_a_crash_that_left_a_claim(tmp_path, capsys):
    from ade_runtime.cli import collect
    from ade_runtime.testbed import World, save_png
    from ade_runtime.testbed.imageio import make_image

    world = World(seed=11)
    lines = []
    for i in range(2):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), tmp_path / f"src{i}.png")
        lines.append({"id": f"q{i}", "image": f"src{i}.png", "instruction": r.instruction})
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "collected"
    args = ["--backbone", "testbed", "--requests", str(tmp_path / "requests.jsonl"), "--out", str(out)]
    args += ["--candidates", "1", "--rounds", "1", "--reasoning", "0"]
    assert collect.main(args) == 0
    run_in_process(claim_and_die, str(out), "q2")  # a collect killed while q2 was being written
    lines.append(dict(lines[0], id="q2"))
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    capsys.readouterr()
    assert collect.main(args) == 0  # resumes: q0, q1 skipped, q2's stale claim released, q2 written
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 1
    code, summary, _ = validate(out, "--decode")
    assert (code, summary["valid"]) == (0, 3)


def test_images_of_a_record_whose_line_never_came_are_removed_with_its_stale_claim(tmp_path):
    TraceWriter(tmp_path).close()
    run_in_process(write_then_die, str(tmp_path), "half", 50)  # claim + 5 images, no line
    assert len(claims(tmp_path)) == 1 and len(images_of(tmp_path)) == 5
    with TraceWriter(tmp_path) as w:  # recovery at open: the claim and its orphan images go
        assert w.stale_claims_released == 1
        assert images_of(tmp_path) == set() and claims(tmp_path) == []
        w.write(*staged("half", 60))  # the retry (other bytes) is not blocked by leftovers
        run_in_process(write_then_die, str(tmp_path), "half-2", 70)  # and while a writer is open
        assert len(images_of(tmp_path)) == 10
        w.write(*staged("half-2", 80))  # recovery on demand
        assert w.stale_claims_released == 2
    code, summary, _ = validate(tmp_path, "--decode")
    assert (code, summary["valid"]) == (0, 2)
    assert len(images_of(tmp_path)) == 2 * 5  # the two records' images, nothing else
