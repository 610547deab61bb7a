"""ade-edit, ade-collect and ade-replay end to end on the testbed backbone with exported predictors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.predictors import calibrator, card

from ade_runtime.cli import collect, edit, replay
from ade_runtime.policy import POLICY_NAMES, PolicyConfig
from ade_runtime.testbed import World, save_png
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceDataset


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    card(levels=(1, 2, 4)).save_pretrained(d)
    calibrator(-1.0, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    world = World(seed=11)
    lines = []
    for i in range(3):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), d / f"src{i}.png")
        lines.append(
            {"id": f"q{i}", "image": f"src{i}.png", "instruction": r.instruction, "category": r.category}
        )
    (d / "requests.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return d, lines


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ade_edit_writes_the_image_and_a_valid_trace(export, sources, tmp_path, capsys):
    d, lines = sources
    out = tmp_path / "edited.png"
    rc = edit.main(
        [
            "--backbone",
            "testbed",
            "--predictors",
            str(export),
            "--image",
            str(d / "src0.png"),
            "--instruction",
            lines[0]["instruction"],
            "--out",
            str(out),
            "--trace-dir",
            str(tmp_path / "traces"),
            "--id",
            "q0",
            "--json",
            "--allow-fallback",  # the export has no critique
        ]
    )
    assert rc == 0 and out.exists()
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "critique not loaded" in captured.err and f"image written to {out}" in captured.out
    assert 1 <= summary["attempts"] <= summary["budget"] * 1 + 8 and summary["nfe"] > 0
    ds = TraceDataset(tmp_path / "traces", images="decode")
    recs = list(ds)
    assert ds.rejects == [] and [r.id for r in recs] == ["q0"]
    assert recs[0].meta["ade"]["chosen"] == summary["chosen"]
    # the fallback the user allowed is recorded in the trace
    assert {"stage": "load", "predictor": "critique"}.items() <= recs[0].meta["ade"]["failures"][0].items()


def test_ade_edit_reports_bad_input_without_traceback(export, tmp_path, capsys):
    rc = edit.main(
        [
            "--backbone",
            "testbed",
            "--predictors",
            str(export),
            "--image",
            str(tmp_path / "nope.png"),
            "--instruction",
            "x",
            "--out",
            str(tmp_path / "o.png"),
        ]
    )
    assert rc == 2 and "cannot read the image" in capsys.readouterr().err
    rc = edit.main(
        [
            "--backbone",
            "nope",
            "--predictors",
            str(export),
            "--image",
            "x",
            "--instruction",
            "x",
            "--out",
            str(tmp_path / "o.png"),
        ]
    )
    assert rc == 2 and "unknown backbone" in capsys.readouterr().err


def test_ade_collect_shards_resume_and_validate(sources, tmp_path, capsys):
    d, _ = sources
    out = tmp_path / "collected"
    base = [
        "--backbone",
        "testbed",
        "--requests",
        str(d / "requests.jsonl"),
        "--out",
        str(out),
        "--candidates",
        "2",
        "--rounds",
        "2",
        "--reasoning",
        "0,512",
    ]
    assert collect.main([*base, "--shard", "0/2"]) == 0
    assert last_json(capsys)["written"] == 2  # requests 0 and 2
    assert collect.main([*base, "--shard", "1/2"]) == 0
    assert last_json(capsys)["written"] == 1
    assert collect.main([*base, "--shard", "0/2"]) == 0
    assert last_json(capsys) | {} == {
        "shard": "0/2",
        "written": 0,
        "skipped": 2,
        "failed": 0,
        "rejected_lines": 0,
    }
    ds = TraceDataset(out, images="header")
    recs = sorted(ds, key=lambda r: r.id)
    assert ds.rejects == [] and [r.id for r in recs] == ["q0", "q1", "q2"]
    assert all(len(r.attempts) == 8 and all(a.judge is None for a in r.attempts) for r in recs)
    r1 = [a for a in recs[0].attempts if a.round == 1]
    assert all(a.image is not None for a in r1)


def test_ade_collect_rejects_bad_request_lines(sources, tmp_path, capsys):
    d, lines = sources
    bad = tmp_path / "requests.jsonl"
    bad.write_text(
        json.dumps(lines[0] | {"image": str(d / "src0.png")})
        + "\nnot json\n"
        + json.dumps({"id": "x"})
        + "\n"
    )
    rc = collect.main(
        [
            "--backbone",
            "testbed",
            "--requests",
            str(bad),
            "--out",
            str(tmp_path / "o"),
            "--candidates",
            "1",
            "--rounds",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and ":2: not JSON" in err and "field 'image'" in err


def test_ade_replay_compares_every_policy(export, tmp_path, capsys):
    from ade_runtime.testbed.generate import generate_dataset

    data = tmp_path / "traces"
    generate_dataset(
        data,
        n_requests=12,
        seed=5,
        progress=False,
        candidates=8,
        rounds=2,
        reasoning_levels=(0, 512),
        image_size=64,
        workers=1,
    )
    rc = replay.main(["--traces", str(data), "--predictors", str(export), "--json", "--allow-fallback"])
    assert rc == 0
    res = last_json(capsys)
    pol = res["policies"]
    assert set(pol) == set(POLICY_NAMES)
    for name in ("mean_score", "pass_rate", "nfe_per_request", "gpu_seconds_per_request", "by_category"):
        assert name in pol["ade"]
    nfe1 = pol["single"]["nfe_per_request"]
    assert pol["best_of_8"]["nfe_per_request"] == pytest.approx(8 * nfe1)
    assert pol["best_of_8_oracle"]["mean_score"] >= pol["best_of_8"]["mean_score"]
    assert pol["oracle"]["pass_rate"] >= pol["best_of_8_oracle"]["pass_rate"]
    # fixed_chain wants rounds 0..s_max-1; with two logged rounds and s_max=2 it is complete
    assert "note" not in pol["fixed_chain"]
