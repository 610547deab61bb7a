"""Black-box tests of testbed trace generation and the ``ade-testbed`` CLI (TESTBED data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES

from ade_runtime.backbones.base import AttemptSpec, EditRequest
from ade_runtime.feedback import parse_feedback
from ade_runtime.testbed import SyntheticBackbone, load_png
from ade_runtime.testbed.cli import main
from ade_runtime.traces import load_records

FIXTURE = FIXTURES / "testbed_small"
# The exact command that produced the committed fixture (see its README.md).
FIXTURE_ARGS = [
    "--requests",
    "40",
    "--seed",
    "0",
    "--candidates",
    "4",
    "--rounds",
    "3",
    "--reasoning",
    "0,512",
]
FIXTURE_ARGS += ["--image-size", "64", "--image-every", "1", "--workers", "1", "--quiet"]
SMALL = ["--requests", "6", "--candidates", "2", "--rounds", "2", "--reasoning", "0,64", "--image-size", "64"]
SMALL += ["--image-every", "2", "--quiet"]


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.jsonl"))}


def test_generate_writes_valid_complete_grid(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["generate", "--out", str(out), "--seed", "3", "--workers", "1", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["testbed"] is True and summary["n_requests"] == 6
    assert (out / ".complete").exists() and json.loads((out / "generation.json").read_text())[
        "testbed"
    ] is True
    records, rejects = load_records(out, images="header")
    assert rejects == [] and len(records) == 6
    for rec in records:
        assert rec.meta["testbed"] is True and rec.meta["image_size"] == 64
        assert {"n_edits", "clutter", "ambiguous", "nfe_per_attempt", "preview_step"} <= set(rec.meta)
        assert set(rec.attempt_grid()) == {(c, r, t) for c in range(2) for r in range(2) for t in (0, 64)}
        stored = int(rec.id.split("-")[1]) % 2 == 0
        for a in rec.attempts:
            assert (a.image is not None) == stored
            assert {"clip_t", "clip_i", "vlm", "preview_clip_t", "preview_clip_i"} == set(a.scores)
            assert 0.0 <= a.scores["vlm"] <= 1.0
            assert a.cost.nfe == rec.meta["nfe_per_attempt"] and a.cost.latency_s > 0
            for f in a.judge.flaws:
                assert 0 <= f.box[0] < f.box[2] <= 1 and 0 <= f.box[1] < f.box[3] <= 1
            if a.round > 0:
                prev = rec.attempt_grid()[(a.candidate, a.round - 1, a.reasoning_tokens)]
                assert len(parse_feedback(a.prompt)) == len(prev.judge.flaws)


def test_generation_is_resumable_and_worker_independent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [
        "--requests",
        "60",
        "--candidates",
        "1",
        "--rounds",
        "2",
        "--reasoning",
        "0",
        "--image-every",
        "30",
    ]
    assert main(["generate", "--out", str(a), "--workers", "1", "--quiet", *args]) == 0
    assert main(["generate", "--out", str(b), "--workers", "2", "--quiet", *args]) == 0
    assert _shards(a) == _shards(b) and len(_shards(a)) == 2
    first = _shards(a)
    (a / "traces-00001.jsonl").unlink()  # an interrupted run: one chunk and .complete missing
    (a / ".complete").unlink()
    assert main(["generate", "--out", str(a), "--workers", "1", "--quiet", *args]) == 0
    assert _shards(a) == first and (a / ".complete").exists()
    assert main(["generate", "--out", str(a), "--workers", "1", "--quiet", *args[:-1], "10"]) == 2


def test_bad_options_exit_with_a_message(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x"), "--categories", "teleport", "--quiet"]) == 2
    assert "teleport" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "y"), "--backbone", "dalle", "--quiet"]) == 2


def test_request_cli_writes_a_source_the_backbone_can_edit(tmp_path, capsys):
    assert main(["request", "--out", str(tmp_path), "--seed", "5", "--category", "remove"]) == 0
    instruction = capsys.readouterr().out.strip()
    assert json.loads((tmp_path / "request.json").read_text())["instruction"] == instruction
    img = load_png(tmp_path / "source.png")
    bb = SyntheticBackbone()
    state = bb.prepare(EditRequest(image=img, instruction=instruction))
    out = bb.run(state, AttemptSpec(0, 0, 0, instruction, seed=0))
    assert out.image.size == img.size


def test_committed_fixture_is_valid_and_regenerates_exactly(tmp_path):
    records, rejects = load_records(FIXTURE, images="decode")
    assert rejects == [] and len(records) == 40
    assert all(r.meta["testbed"] and len(r.attempts) == 4 * 3 * 2 for r in records)
    assert all(a.image is not None for r in records for a in r.attempts)
    passed = np.mean([a.judge.passed for r in records for a in r.attempts])
    assert 0.3 < passed < 0.95
    out = tmp_path / "regen"
    assert main(["generate", "--out", str(out), *FIXTURE_ARGS]) == 0
    assert _shards(out) == _shards(FIXTURE)
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in (root / "images").rglob("*.png"))  # noqa: E731
    assert names(out) == names(FIXTURE)


@pytest.mark.parametrize("backbone", ["flux-kontext", "step1x-edit"])
def test_other_cost_models(tmp_path, backbone):
    out = tmp_path / backbone
    assert main(["generate", "--out", str(out), "--backbone", backbone, "--workers", "1", *SMALL]) == 0
    records, _ = load_records(out, images="none")
    assert {r.backbone for r in records} == {f"testbed:{backbone}"}


def test_generate_dataset_store_images_shortcut(tmp_path):
    from ade_runtime.errors import InputError
    from ade_runtime.testbed.generate import generate_dataset

    grid = dict(candidates=1, rounds=1, reasoning_levels=(0,), image_size=64, workers=1, progress=False)
    s = generate_dataset(tmp_path / "all", n_requests=3, seed=2, store_images="all", **grid)
    assert s["testbed"] is True and s["n_requests"] == 3
    records, _ = load_records(tmp_path / "all", images="none")
    assert all(a.image is not None for r in records for a in r.attempts)
    with pytest.raises(InputError, match="store_images"):
        generate_dataset(tmp_path / "bad", n_requests=3, store_images="some", **grid)


def test_shifted_dataset_respects_clutter_and_categories(tmp_path):
    out = tmp_path / "shifted"
    args = [
        "--requests",
        "8",
        "--seed",
        "1",
        "--clutter",
        "5:10",
        "--categories",
        "action,remove",
        "--ambiguity",
        "0.5",
    ]
    args += [
        "--candidates",
        "1",
        "--rounds",
        "1",
        "--reasoning",
        "0",
        "--image-size",
        "64",
        "--workers",
        "1",
        "--quiet",
    ]
    assert main(["generate", "--out", str(out), *args]) == 0
    records, _ = load_records(out, images="none")
    assert {r.category for r in records} <= {"action", "remove"}
    assert all(5 <= r.meta["clutter"] <= 10 and r.meta["seed"] == 1 for r in records)


def test_realism_cli_prints_figures(capsys):
    assert main(["realism", "--requests", "12", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["testbed"] is True and 0 <= out["single_pass"] <= out["best_of_8"] <= 1
    assert {"guided", "blind", "wrong_region"} <= set(out["refinement"])


def test_ctrl_c_stops_the_workers_at_once_and_the_rerun_finishes_the_same_data(tmp_path):
    """Ctrl-C terminates the workers mid-chunk (nothing unpublished is kept); the rerun resumes to the
    same shards and images as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--requests", "400", "--candidates", "1", "--rounds", "2", "--reasoning", "0", "--quiet"]
    cut, clean = tmp_path / "cut", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "ade_runtime.testbed.cli", "generate", "--out", str(cut), "--workers", "2"]
    proc = subprocess.Popen(
        [*cmd, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even under nohup
    )
    t0 = time.monotonic()
    while not any(cut.glob("traces-*.jsonl")) and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not (cut / ".complete").exists() and len(_shards(cut)) < 8  # stopped before the end
    assert main(["generate", "--out", str(cut), "--workers", "2", *args]) == 0
    assert main(["generate", "--out", str(clean), "--workers", "1", *args]) == 0
    assert _shards(cut) == _shards(clean)
    images = lambda d: sorted(p.relative_to(d).as_posix() for p in (d / "images").rglob("*.png"))  # noqa: E731
    assert images(cut) == images(clean) and not list(cut.glob(".tmp-chunk-*/*.jsonl"))
