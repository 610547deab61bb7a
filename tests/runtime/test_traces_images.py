"""Malformed image corpus: missing, corrupt, truncated, unsupported, decompression bombs, escapes, symlinks."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest

# the shared builders live next to this file (works with or without tests/__init__.py)
from helpers.traces import png_bytes, put_image, record_dict, write_shard
from PIL import Image

from ade_runtime.traces import ImageChecker, TraceDataset, load_records


def png_declaring(width: int, height: int) -> bytes:
    """A tiny (~60 byte) PNG whose header declares width x height: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def dataset_with_source(root, data: bytes | None, rel: str = "images/req-0/source.png"):
    obj = record_dict("req-0", n_candidates=1, n_rounds=1)
    obj["attempts"][0]["image"] = None
    obj["source_image"] = rel
    if data is not None:
        put_image(root, rel, data)
    write_shard(root, [obj])
    return obj


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n but then garbage", "corrupt_image"),
        (b"", "corrupt_image"),
        (os.urandom(64), "corrupt_image"),
        (png_bytes(fmt="GIF"), "unsupported_image_format"),
        (png_bytes(fmt="BMP"), "unsupported_image_format"),
        (png_declaring(100_000, 100_000), "image_too_large"),  # above PIL's own bomb error threshold
        (png_declaring(9_000, 9_000), "image_too_large"),  # 81 Mpx: under PIL's limit, over our 64 Mpx cap
    ],
)
def test_bad_images_are_rejected_with_reason(tmp_path, data, reason):
    dataset_with_source(tmp_path, data)
    for mode in ("header", "decode"):
        records, rejects = load_records(tmp_path, images=mode)
        assert records == []
        assert [(r.reason, r.field) for r in rejects] == [(reason, "source_image")]
        assert "source_image" in rejects[0].message
    records, rejects = load_records(tmp_path, images="none")  # "none" never opens files
    assert len(records) == 1 and rejects == []


def webp_declaring(width: int, height: int) -> bytes:
    """A 30-byte extended-WebP header declaring a width x height canvas, and nothing else."""
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\0" * 4
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + (4 + len(vp8x)).to_bytes(4, "little") + b"WEBP" + vp8x


def test_webp_bomb_is_refused_before_pil_allocates_its_canvas(tmp_path):
    # 144 Mpx: under PIL's own bomb error (179 Mpx), where its WebP opener would allocate the canvas;
    # had PIL opened this header-only file, the reason would be corrupt_image, not image_too_large
    dataset_with_source(tmp_path, webp_declaring(12_000, 12_000), rel="images/bomb.webp")
    _, rejects = load_records(tmp_path)
    assert [r.reason for r in rejects] == ["image_too_large"]
    assert "12000x12000" in rejects[0].message
    dataset_with_source(tmp_path, webp_declaring(64, 64), rel="images/small.webp")
    _, rejects = load_records(tmp_path)
    assert [r.reason for r in rejects] == ["corrupt_image"]  # small header-only file: PIL says corrupt


def test_bomb_message_names_dimensions_and_cap(tmp_path):
    dataset_with_source(tmp_path, png_declaring(9_000, 9_000))
    _, rejects = load_records(tmp_path)
    assert "9000x9000" in rejects[0].message and "64000000" in rejects[0].message
    records, rejects = load_records(tmp_path, images="header", max_pixels=100_000_000)
    assert len(records) == 1 and rejects == []  # the cap is a parameter; header mode decodes nothing


def test_truncated_png_passes_header_but_fails_decode(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    dataset_with_source(tmp_path, buf.getvalue()[: len(buf.getvalue()) // 2])
    records, rejects = load_records(tmp_path, images="header")
    assert len(records) == 1 and rejects == []
    records, rejects = load_records(tmp_path, images="decode")
    assert records == [] and [r.reason for r in rejects] == ["corrupt_image"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode(tmp_path, fmt):
    dataset_with_source(tmp_path, png_bytes((9, 5), fmt=fmt), rel=f"images/s.{fmt.lower()}")
    records, rejects = load_records(tmp_path, images="decode")
    assert len(records) == 1 and rejects == []


def test_directory_instead_of_image(tmp_path):
    (tmp_path / "images" / "req-0" / "source.png").mkdir(parents=True)
    dataset_with_source(tmp_path, None)
    _, rejects = load_records(tmp_path)
    assert [r.reason for r in rejects] == ["unreadable_image"]


def test_symlinks_inside_are_fine_and_outside_are_escapes(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes())
    put_image(root, "real/inside.png")
    (root / "images").mkdir()
    os.symlink(root / "real" / "inside.png", root / "images" / "ok.png")
    os.symlink(outside / "secret.png", root / "images" / "leak.png")
    os.symlink(outside, root / "linkdir")
    good = dataset_with_source(root, None, "images/ok.png")
    leak = dict(good, id="leak", source_image="images/leak.png")
    via_dir = dict(good, id="via-dir", source_image="linkdir/secret.png")
    write_shard(root, [good, leak, via_dir])
    # a shard inside a symlinked directory is not part of the dataset
    write_shard(outside, [dict(good, id="foreign")], "foreign.jsonl")
    ds = TraceDataset(root)
    assert [r.id for r in ds] == ["req-0"]
    assert [(r.id, r.reason) for r in ds.rejects] == [("leak", "path_escape"), ("via-dir", "path_escape")]
    assert "outside the dataset" in ds.rejects[0].message


def test_dataset_root_given_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    dataset_with_source(real, png_bytes())
    os.symlink(real, tmp_path / "alias")
    records, rejects = load_records(tmp_path / "alias", images="decode")
    assert len(records) == 1 and rejects == []


def test_attempt_images_are_checked_like_sources(tmp_path):
    obj = record_dict("req-0", n_candidates=1, n_rounds=2)
    put_image(tmp_path, obj["source_image"])
    put_image(tmp_path, obj["attempts"][0]["image"])
    put_image(tmp_path, obj["attempts"][1]["image"], png_declaring(20_000, 20_000))
    write_shard(tmp_path, [obj])
    _, rejects = load_records(tmp_path)
    assert [(r.reason, r.field) for r in rejects] == [("image_too_large", "attempts[1].image")]


def test_checker_caches_per_path(tmp_path):
    put_image(tmp_path, "a.png")
    checker = ImageChecker(tmp_path, "header")
    assert checker.check(tmp_path, "a.png") is None
    (tmp_path / "a.png").unlink()
    assert checker.check(tmp_path, "./a.png") is None  # same normalised path: not opened again
    assert checker.check(tmp_path, "b/../a.png") is None
    assert ImageChecker(tmp_path, "header").check(tmp_path, "a.png")[0] == "missing_image"
    with pytest.raises(ValueError, match="images"):
        ImageChecker(tmp_path, "full")
