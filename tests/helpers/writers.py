"""Trace-writer processes for the integrity tests (no tests here): importable, so ``spawn`` can run them."""

from __future__ import annotations

import os
from typing import Any

from ade_runtime.traces import DuplicateRecordId, TraceWriter
from helpers.traces import png_bytes, record_dict


def staged(rid: str, value: int) -> tuple[dict, dict[str, bytes]]:
    """A valid record (2 candidates x 2 rounds) and its images, every pixel ``value``."""
    obj = record_dict(rid)
    images = {obj["source_image"]: png_bytes(value=value)}
    for a in obj["attempts"]:
        images[a["image"]] = png_bytes(value=value)
    return obj, images


def write_ids(root: str, ids: list[str], value: int, barrier: Any = None) -> dict[str, list[str]]:
    """Open a writer on ``root`` (wait at ``barrier`` so that every process has one open), write
    ``ids`` with images of pixel ``value``; {"written": [...], "refused": [...]}."""
    out: dict[str, list[str]] = {"written": [], "refused": []}
    with TraceWriter(root) as w:
        if barrier is not None:
            barrier.wait(timeout=60)
        for rid in ids:
            obj, images = staged(rid, value)
            try:
                w.write(obj, images=images)
                out["written"].append(rid)
            except DuplicateRecordId:
                out["refused"].append(rid)
    return out


def claim_and_die(root: str, rid: str) -> None:
    """Claim ``rid``, then end the process without writing the record or closing (a crash)."""
    w = TraceWriter(root)
    w.claim(rid)
    os._exit(0)


def write_then_die(root: str, rid: str, value: int) -> None:
    """Write ``rid`` with its images, but end the process when the record's line is about to be
    appended (after the claim and the images: the crash window of an all-or-nothing write)."""
    w = TraceWriter(root)
    obj, images = staged(rid, value)

    def die(fd, data):
        os._exit(0)

    os.write = die  # only the shard append goes through os.write
    w.write(obj, images=images)
