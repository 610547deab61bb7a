"""What a new user trips over (issue 17) and strict loading (issue 15), through the CLIs a user runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import helpers.predictors as helper_predictors
import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.predictors import calibrator, card
from PIL import Image

from ade_runtime.cli import collect, edit, replay
from ade_runtime.cli.collect import ShardLock
from ade_runtime.errors import ArtifactError
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.predictors.calibration import CalibrationConfig
from ade_runtime.predictors.card import CardConfig
from ade_runtime.predictors.config_base import ArtifactConfig, RuntimeOptions
from ade_runtime.predictors.critique import CritiqueConfig, CritiquePredictor
from ade_runtime.testbed import World, save_png
from ade_runtime.testbed import cli as testbed_cli
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceDataset

ROOT = REPO  # the repository root
FIXTURE = ROOT / "tests" / "fixtures" / "testbed_small"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def tiny_critique() -> CritiquePredictor:
    return helper_predictors.critique()


def full_export(d: Path) -> Path:
    card(levels=(1, 2, 4)).save_pretrained(d)
    tiny_critique().save_pretrained(d)
    calibrator(-1.0, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return full_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    r = World(seed=11).sample_request(np.random.default_rng(0))
    save_png(make_image(r.source, r.source, 64), d / "src.png")
    return d / "src.png", r.instruction


def edit_args(export, image, instruction, out, *extra):
    return [
        "--backbone",
        "testbed",
        "--predictors",
        str(export),
        "--image",
        str(image),
        "--instruction",
        instruction,
        "--out",
        str(out),
        *extra,
    ]


# -- the five corrupt CARD exports (cf. tests/test_artifacts_corruption.py) ---------------------------


def _truncated(d):
    st = d / "card.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    return st


def _bit_flipped(d):
    st = d / "card.safetensors"
    data = bytearray(st.read_bytes())
    data[-5] ^= 0x10
    st.write_bytes(bytes(data))
    return st


def _wrong_version(d):
    jp = d / "card.json"
    meta = json.loads(jp.read_text())
    meta["format_version"] = 99
    jp.write_text(json.dumps(meta))
    return jp


def _json_less(d):
    jp = d / "card.json"
    jp.write_text("this is not JSON {")
    return jp


def _pickle_in_disguise(d):
    st = d / "card.safetensors"
    st.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    return st


CORRUPTIONS = [_truncated, _bit_flipped, _wrong_version, _json_less, _pickle_in_disguise]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_card_is_refused_by_replay_and_edit_naming_the_file(
    corrupt, export, source, tmp_path, capsys
):
    d = tmp_path / "export"
    shutil.copytree(export, d)
    bad_file = corrupt(d)
    with pytest.raises(ArtifactError, match=str(bad_file)):
        Predictors.load(d)
    with pytest.raises(ArtifactError, match=str(bad_file)):
        Predictors.load(d, strict=False)  # a present but corrupt predictor is refused either way
    assert replay.main(["--traces", str(FIXTURE), "--predictors", str(d), "--allow-fallback"]) == 2
    err = capsys.readouterr().err
    assert str(bad_file) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    image, instruction = source
    out = tmp_path / "o.png"
    assert edit.main(edit_args(d, image, instruction, out, "--allow-fallback")) == 2
    err = capsys.readouterr().err
    assert str(bad_file) in err and not out.exists()


def test_missing_predictor_falls_back_only_when_asked(export, source, tmp_path, capsys):
    d = tmp_path / "card-only"
    d.mkdir()
    for f in ("card.json", "card.safetensors"):
        shutil.copy(export / f, d / f)
    image, instruction = source
    with pytest.raises(ArtifactError, match="--allow-fallback"):
        Predictors.load(d)
    assert edit.main(edit_args(d, image, instruction, tmp_path / "o.png")) == 2
    assert "critique.json: not exported" in capsys.readouterr().err
    preds = Predictors.load(d, strict=False)
    assert preds.card is not None and set(preds.load_failures) == {"critique", "calibrator"}
    # CARD-only: replay says that every selection policy degenerates to the first attempt
    assert replay.main(["--traces", str(FIXTURE), "--predictors", str(d), "--allow-fallback", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out.strip().splitlines()[-1])
    assert res["no_confidence"] is True
    assert "no confidence is available" in cap.err and "no confidence is available" in cap.out
    assert "calibrator not loaded" in cap.err


def test_training_out_dir_uses_its_export_and_empty_dir_suggests_it(export, tmp_path, capsys):
    out = tmp_path / "OUT"
    shutil.copytree(export, out / "export")
    preds = Predictors.load(out)
    assert preds.directory == out / "export" and "using its export" in preds.note
    assert replay.main(["--traces", str(FIXTURE), "--predictors", str(out), "--policies", "single,ade"]) == 0
    assert f"using its export {out / 'export'}" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert replay.main(["--traces", str(FIXTURE), "--predictors", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no predictor found" in err and "OUT/export" in err and "{" not in err


def test_runtime_options_are_honoured_and_never_saved(export, tmp_path):
    preds = Predictors.load(export, dtype="float64")
    assert next(preds.card.model.parameters()).dtype == torch.float64
    assert next(preds.critique.head.parameters()).dtype == torch.float64
    assert 1 <= preds.card.predict("make it blue", Image.new("RGB", (64, 64))).quantile(0.8) <= 4
    assert "device" not in json.loads((export / "card.json").read_text())["config"]
    with pytest.raises(ValueError, match="RuntimeOptions.dtype"):
        RuntimeOptions(dtype="float7")


# -- the config base ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CardConfig, CritiqueConfig, CalibrationConfig, PolicyConfig, RuntimeOptions])
def test_every_config_field_has_help(cls):
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(cls)), cls


def test_config_base_warns_on_unknown_and_names_missing_key_and_file():
    for cls in (CardConfig, CritiqueConfig, CalibrationConfig, PolicyConfig):
        assert issubclass(cls, ArtifactConfig)
    with pytest.warns(UserWarning, match=r"f.json: unknown PolicyConfig keys \['tau_hgh'\]"):
        assert PolicyConfig.from_dict({"tau_hgh": 0.5}, "f.json") == PolicyConfig()
    with pytest.raises(ArtifactError, match=r"c.json: missing key 'config.levels'"):
        CardConfig.from_dict({"input_dim": 3}, "c.json")
    with pytest.raises(ArtifactError, match=r"k.json: missing key 'config.feature_names'"):
        CalibrationConfig.from_dict({"method": "logistic"}, "k.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = CardConfig(input_dim=3, levels=[1, 2])
        assert CardConfig.from_dict(cfg.to_dict(), "c.json") == cfg


# -- output paths and inputs, checked before anything heavy ------------------------------------------


def test_edit_out_into_new_folders_works_and_files_are_0644(export, source, tmp_path, capsys):
    image, instruction = source
    out = tmp_path / "new" / "dir" / "out.png"
    traces = tmp_path / "new" / "traces"
    old = os.umask(0o022)
    try:
        assert edit.main(edit_args(export, image, instruction, out, "--trace-dir", str(traces))) == 0
    finally:
        os.umask(old)
    text = capsys.readouterr().out
    assert f"image written to {out}" in text and f"trace written to {traces}" in text
    conf = text.split("with confidence ")[1].split(",")[0]
    assert len(conf.split(".")[1]) == 3  # three decimals
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    images = [p for p in traces.rglob("*.png")]
    assert images and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in images)


def test_bad_inputs_are_refused_before_predictors_load(source, tmp_path, capsys):
    image, instruction = source
    nowhere = tmp_path / "no-export"  # would fail if predictors were loaded first
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 40)).save(big)
    cases = [
        (edit_args(nowhere, image, "   ", tmp_path / "o.png"), "--instruction: the instruction is empty"),
        (edit_args(nowhere, big, instruction, tmp_path / "o.png"), f"--image {big}: image is 5000x40"),
        (edit_args(nowhere, image, instruction, tmp_path / "o.gif"), "unknown image type '.gif'"),
        (edit_args(nowhere, image, instruction, tmp_path), "is a folder"),
    ]
    for argv, expected in cases:
        assert edit.main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and "request 'request'" not in err and "no-export" not in err, err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert edit.main(edit_args(nowhere, image, instruction, blocker / "o.png")) == 2
    assert "cannot create the folder" in capsys.readouterr().err


# -- ade-collect basics -------------------------------------------------------------------------------


def test_collect_requests_format_missing_file_append_and_lock(export, tmp_path, capsys):
    with pytest.raises(SystemExit):
        collect.main(["--help"])
    assert '"instruction"' in capsys.readouterr().out
    base = ["--backbone", "testbed", "--candidates", "1", "--rounds", "1"]
    assert (
        collect.main([*base, "--requests", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    reqs = tmp_path / "reqs" / "requests.jsonl"
    for seed in (1, 2):
        assert (
            testbed_cli.main(
                ["request", "--out", str(tmp_path / f"r{seed}"), "--seed", str(seed), "--append", str(reqs)]
            )
            == 0
        )
    assert (
        testbed_cli.main(["request", "--out", str(tmp_path / "r1"), "--seed", "1", "--append", str(reqs)])
        == 2
    )
    assert "already there" in capsys.readouterr().err
    lines = [json.loads(x) for x in reqs.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["testbed-1", "testbed-2"]
    out = tmp_path / "new" / "collected"
    out.mkdir(parents=True)
    with ShardLock(out, 0, 1):  # stands for a first ade-collect still writing shard 0/1
        assert collect.main([*base, "--requests", str(reqs), "--out", str(out)]) == 2
        assert "another ade-collect" in capsys.readouterr().err
        # another shard of the same request file may write concurrently
        assert collect.main([*base, "--requests", str(reqs), "--out", str(out), "--shard", "1/2"]) == 0
    assert collect.main([*base, "--requests", str(reqs), "--out", str(out)]) == 0
    assert sorted(r.id for r in TraceDataset(out)) == ["testbed-1", "testbed-2"]
    nested = tmp_path / "a" / "b" / "c"
    assert collect.main([*base, "--requests", str(reqs), "--out", str(nested)]) == 0
    assert len(list(TraceDataset(nested))) == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert collect.main([*base, "--requests", str(reqs), "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# -- the same dirty dataset through every tool ---------------------------------------------------------


@pytest.fixture
def dirty(tmp_path):
    d = tmp_path / "dirty"
    shutil.copytree(FIXTURE, d)
    shard = d / "traces-00000.jsonl"
    lines = shard.read_text().splitlines()
    first = json.loads(lines[0])
    (d / first["source_image"]).write_bytes(b"this is not a PNG")  # one corrupt source image
    lines[5] = lines[5][: len(lines[5]) // 2]  # one cut line
    shard.write_text("\n".join(lines) + "\n")
    return d


def test_dirty_dataset_through_judge_replay_and_collect(dirty, export, tmp_path, capsys):
    from ade_train.judge.cli import main as judge_main

    d = dirty
    out = tmp_path / "new" / "judged"  # parent folders are created
    assert judge_main(["--traces", str(d), "--out", str(out), "--judge", "testbed", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 rejected records" in err and "traces-00000.jsonl:1 id=req-000000" in err
    ds = TraceDataset(out, images="header")
    ids = [r.id for r in ds]
    assert ds.rejects == [] and len(ids) == 38 and "req-000000" not in ids

    assert (
        replay.main(["--traces", str(d), "--predictors", str(export), "--policies", "single,ade", "--json"])
        == 0
    )
    cap = capsys.readouterr()
    assert "2 bad record(s) skipped" in cap.err and "traces-00000.jsonl:6" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["requests"] == 38

    reqs = tmp_path / "requests.jsonl"
    assert (
        testbed_cli.main(["request", "--out", str(tmp_path / "r"), "--seed", "4", "--append", str(reqs)]) == 0
    )
    capsys.readouterr()
    argv = [
        "--backbone",
        "testbed",
        "--requests",
        str(reqs),
        "--out",
        str(d),
        "--candidates",
        "1",
        "--rounds",
        "1",
    ]
    assert collect.main(argv) == 0
    cap = capsys.readouterr()
    assert "1 bad record(s) in --out ignored" in cap.err and "traces-00000.jsonl:6" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["written"] == 1


# -- Ctrl-C ------------------------------------------------------------------------------------------


def _interrupt(cmd: list[str], ready, timeout: float = 60.0) -> subprocess.CompletedProcess:
    # a terminal's Ctrl-C: SIGINT handled by default even when this test runs under nohup or `cmd &`,
    # which start it ignored (an ignored SIGINT is inherited and Python then installs no handler)
    proc = subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    t0 = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ctrl_c_during_generation_and_collection_prints_one_line(tmp_path):
    out = tmp_path / "gen"
    cmd = [
        sys.executable,
        "-m",
        "ade_runtime.testbed.cli",
        "generate",
        "--out",
        str(out),
        "--requests",
        "20000",
    ]
    res = _interrupt([*cmd, "--workers", "2", "--quiet"], lambda: any(out.glob("traces-*.jsonl")))
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.strip() == (
        "ade-testbed: interrupted; rerun the same command to resume"
    )
    assert testbed_cli.main(["request", "--out", str(tmp_path), "--seed", "1"]) == 0
    instruction = json.loads((tmp_path / "request.json").read_text())["instruction"]
    reqs = tmp_path / "requests.jsonl"
    reqs.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "image": "source.png", "instruction": instruction}) + "\n"
            for i in range(400)
        )
    )
    coll = tmp_path / "coll"
    cmd = [sys.executable, "-m", "ade_runtime.cli.collect", "--backbone", "testbed", "--requests", str(reqs)]
    res = _interrupt([*cmd, "--out", str(coll)], lambda: any(coll.glob("*.jsonl")))
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "ade-collect: interrupted; rerun the same command to resume"


# -- the README snippet ------------------------------------------------------------------------------


def test_public_names_are_importable():
    import ade_runtime
    import ade_runtime.predictors as predictors

    for name in ade_runtime.__all__:
        assert getattr(ade_runtime, name) is not None
    assert {"Predictors", "AdaptiveEditor", "EditRequest", "load_backbone", "TraceWriter"} <= set(
        dir(ade_runtime)
    )
    assert {"log_request", "testbed_scorer", "ClipScorer"} <= set(ade_runtime.__all__)
    assert "Predictors" in predictors.__all__ and predictors.Predictors is Predictors


def test_readme_snippet_runs_as_written_on_the_testbed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full_export(tmp_path / "checkpoints" / "card" / "export")  # stands for `make train`'s export
    assert testbed_cli.main(["request", "--out", "req", "--seed", "3"]) == 0
    # the README's serving snippet, exactly as the README shows it
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    marker = "(this exact block is executed by the test suite):"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    result, req = scope["result"], scope["req"]
    assert result.image is not None and [r.instruction for r in TraceDataset("traces/mine")] == [
        req["instruction"]
    ]


def test_rejects_file_is_written_0644_like_shards(dirty, tmp_path):
    from ade_runtime.traces.cli import main as traces_main

    rejects = tmp_path / "rejects.jsonl"
    old = os.umask(0o022)
    try:
        assert traces_main(["validate", str(dirty), "--rejects", str(rejects), "--quiet"]) == 1
    finally:
        os.umask(old)
    assert len(rejects.read_text().splitlines()) == 2
    assert stat.S_IMODE(rejects.stat().st_mode) == 0o644
