"""The exactly-once claims of ``ade-collect --ray`` (no Ray needed): a request is written under one
claim; a dead writer's complete line is found (no second write), its cut line is not (taken over)."""

from __future__ import annotations

import json
import threading

from helpers.traces import put_image, simple_record

from ade_runtime.scale.claims import ClaimBook, forget_done
from ade_runtime.traces import TraceDataset, TraceWriter


def test_claim_finish_then_skip(tmp_path):
    a = ClaimBook(tmp_path, "ray-a", job="j1")
    claim = a.claim("q0")
    assert claim is not None and claim.generation == 0 and claim.tries == 0
    a.finish(claim)
    a.release(claim)
    a.release(claim)  # idempotent
    assert a.is_done("q0")
    assert ClaimBook(tmp_path, "ray-b", job="j1").claim("q0") is None  # a retry skips it


def test_only_one_of_racing_writers_wins(tmp_path):
    books = [ClaimBook(tmp_path, f"ray-{i}", job="j") for i in range(8)]
    got, barrier = [], threading.Barrier(len(books))

    def go(book):
        barrier.wait()
        got.append(book.claim("q0"))

    threads = [threading.Thread(target=go, args=(b,)) for b in books]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c is not None for c in got) == 1


def test_a_live_writers_claim_is_not_taken_over(tmp_path):
    live = ClaimBook(tmp_path, "ray-live", job="j1")
    held = live.claim("q3")
    assert held is not None
    assert ClaimBook(tmp_path, "ray-other", job="j1").claim("q3") is None  # its lock is held
    live.release(held)  # as if it died: the kernel drops the lock
    taken = ClaimBook(tmp_path, "ray-other", job="j1").claim("q3")
    assert taken is not None and taken.generation == 1 and taken.tries == 1


def _write(root, prefix, rid):
    put_image(root, "src.png")
    with TraceWriter(root, prefix=prefix, images="none") as w:
        w.write(simple_record(rid, "src.png", None))
    return next(root.glob(f"{prefix}-*.jsonl"))


def test_a_dead_writers_complete_line_is_found_not_written_again(tmp_path):
    dead = ClaimBook(tmp_path, "ray-dead", job="j1")
    claim = dead.claim("q1")
    _write(tmp_path, "ray-dead", "q1")
    dead.release(
        claim
    )  # it died before finish(): its lock is gone  # the record is on disk; the writer died before finish()
    retry = ClaimBook(tmp_path, "ray-new", job="j1")
    assert retry.claim("q1") is None  # found: skipped, and marked done for later retries
    assert retry.is_done("q1")


def test_a_dead_writers_cut_line_is_taken_over(tmp_path):
    dead = ClaimBook(tmp_path, "ray-dead", job="j1")
    dead.release(dead.claim("q2"))  # died mid-line
    shard = _write(tmp_path, "ray-dead", "q2")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # the crash cut the line
    retry = ClaimBook(tmp_path, "ray-new", job="j1")
    claim = retry.claim("q2")
    assert claim is not None and claim.generation == 1 and claim.tries == 1
    retry.release(claim)
    # a later job counts its own deaths only
    assert ClaimBook(tmp_path, "ray-next", job="j2").claim("q2").tries == 0
    ds = TraceDataset(tmp_path, images="none")
    assert list(ds) == [] and [r.reason for r in ds.rejects] == ["truncated_line"]


def test_claims_name_any_id_safely_and_stale_done_marks_are_forgotten(tmp_path):
    book = ClaimBook(tmp_path, "ray-a")
    rid = "../../etc/passwd ünï"
    claim = book.claim(rid)
    assert claim is not None
    book.finish(claim)
    book.release(claim)
    files = list((tmp_path / ".ade-claims").iterdir())
    assert all(f.parent == tmp_path / ".ade-claims" for f in files)
    assert json.loads((tmp_path / ".ade-claims" / f"{claim.key}.done").read_text())["id"] == rid
    assert forget_done(tmp_path, [rid, "other"]) == 1 and not book.is_done(rid)
    assert book.claim(rid) is not None  # collected again (its record is gone from the dataset)
