"""`ade-train card` end to end on a dataset the project did not generate: training, export, re-export,
W&B offline run, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.foreign import write_foreign_traces

from ade_runtime.predictors.card import CardPredictor
from ade_train import tracking
from ade_train.card import build_config, cli_main, train
from ade_train.export import read_manifest

# tiny runs (12 epochs of a few batches) at the learning rate of the old default: the default 3e-4 was
# chosen for ~1,200 training requests and moves a residual CARD too little in 12 short epochs
FAST = [
    "--trainer.enable_progress_bar=false",
    "--data.text_encoder={kind: hashing, dim: 128}",
    "--model.lr=0.003",
]


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    return write_foreign_traces(tmp_path_factory.mktemp("acme"), n=200, seed=2)


@pytest.fixture(scope="module")
def trained(acme, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = build_config(["--data", str(acme), "--out", str(out), "--no-wandb", "--max-epochs", "12", *FAST])
    return out, cfg, train(cfg)


def test_card_beats_the_constant_predictor(trained):
    _, _, m = trained
    # a constant predictor has no rank correlation and the prior's level error
    assert m["test/spearman"] > 0.5
    assert m["test/mae"] < m["test/prior_mae"]
    assert m["test/acc"] > m["test/prior_acc"]
    for q in ("0.5", "0.8", "0.9"):
        assert 0.0 <= m[f"test/cov@{q}"] <= 1.0


def test_export_loads_and_orders_requests_by_difficulty(trained, acme):
    out, _, m = trained
    export = out / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "README.md",
        "card.json",
        "card.safetensors",
        "export.json",
    ]
    assert (export / "card.safetensors").stat().st_size < 2 << 20
    card = CardPredictor.from_pretrained(export)
    img = next(acme.glob("img/*.png"))
    easy = card.predict("warp the teapot slightly", img)
    hard = card.predict("warp the teapot impossibly", img)
    assert easy.expected_level < hard.expected_level and hard.p_beyond > easy.p_beyond
    assert card.config.levels == [1, 2, 3, 4, 5, 6] and card.config.token_levels == [0, 96]  # loop order
    section = read_manifest(export)["predictors"]["card"]
    assert section["data"]["source"] == "real" and section["data"]["backbones"] == ["acme-edit-v2"]
    assert section["metrics"]["test/spearman"] == pytest.approx(m["test/spearman"])
    assert "acme-edit-v2" in (export / "README.md").read_text()


def test_finished_run_reexports_without_retraining(trained, capsys):
    out, cfg, m = trained
    before = (out / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    (out / "export" / "card.json").unlink()  # a damaged export is rebuilt from the best checkpoint
    again = train(dict(cfg))
    assert again == m
    printed = capsys.readouterr().out
    assert "re-exported" in printed and "exported: card: CARD's validation NLL" in printed  # which and why
    assert (out / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before
    CardPredictor.from_pretrained(out / "export")


def test_wandb_offline_run_holds_metrics_and_run_id(acme, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    cfg = build_config(["--data", str(acme), "--out", str(out), "--max-epochs", "2", *FAST])
    train(cfg)
    run_id = tracking.read_run_id(out)
    runs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    got = tracking.read_run_metrics(runs[0], wait_s=0)  # the job's finish() waited for the exit record
    assert got["complete"]
    size = next(runs[0].glob("run-*.wandb")).stat().st_size
    assert any("val/nll" in row for row in got["history"]), (size, [sorted(r) for r in got["history"]])
    assert "test/spearman" in got["summary"] and "train/loss" in got["summary"]
    assert (out / "plots" / "card_coverage.png").is_file() and "max_epochs: 2" in (
        out / "config.yaml"
    ).read_text()
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))  # the coverage curve, offline
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt[tracking.RunIdCallback.KEY] == run_id


def test_cli_errors_are_one_line_exit_2(tmp_path):
    assert cli_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "d").mkdir()
    assert cli_main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--model.bogus=1"]) == 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ade_train.cli",
            "card",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--data" in proc.stderr


def test_resume_flag_fails_loudly_without_checkpoint(acme, tmp_path, capsys):
    code = cli_main(["--data", str(acme), "--out", str(tmp_path / "o"), "--resume", "--no-wandb"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "last.ckpt" in err


def test_print_config_shows_overrides(tmp_path, capsys):
    assert (
        cli_main(
            ["--data", "x", "--out", "y", "--model.hidden=[8]", "--trainer.max_epochs", "3", "--print-config"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "hidden:\n  - 8" in text and "max_epochs: 3" in text
    assert json.dumps(build_config(["--data", "x", "--out", "y", "--seed", "5"])["seed_everything"]) == "5"


def test_same_out_with_other_data_is_refused_not_mixed(acme, tmp_path, capsys):
    out = tmp_path / "o"
    small = write_foreign_traces(tmp_path / "small", n=60, seed=9, candidates=2)
    args = ["--out", str(out), "--no-wandb", "--max-epochs", "1", *FAST]
    assert cli_main(["--data", str(small), *args]) == 0
    capsys.readouterr()
    assert cli_main(["--data", str(acme), *args]) == 2  # finished run on other data
    assert "--force" in capsys.readouterr().err
    (out / "result.json").unlink()  # an interrupted run: only checkpoints remain
    assert cli_main(["--data", str(acme), *args]) == 2  # its levels differ from the new data's
    err = capsys.readouterr().err
    assert "levels" in err and "--force" in err
    assert cli_main(["--data", str(acme), *args, "--force"]) == 0
    assert CardPredictor.from_pretrained(out / "export").config.levels == [1, 2, 3, 4, 5, 6]
