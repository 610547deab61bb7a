"""Shared training infrastructure: W&B offline runs, merged atomic exports, the summary, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ade_runtime.artifacts import load_artifact, save_artifact
from ade_train import cli, export, summary, tracking


def _section(name: str, source: str = "testbed", **metrics: float) -> export.PredictorSection:
    data = export.DataInfo(path="/data/x", fingerprint="sha256:abc", source=source, n_records=10)
    return export.PredictorSection(name=name, title=f"{name} predictor", data=data, metrics=metrics)


def _writer(name: str, value: float):
    def write(d):
        save_artifact(
            d, name, kind=name, class_name="T", config={"v": value}, tensors={"w": torch.full((2,), value)}
        )

    return write


def test_offline_run_holds_metrics_media_and_reuses_run_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png)
    logger = tracking.make_logger(tmp_path / "out", name="t")
    logger.log_metrics({"val/spearman": 0.25}, step=3)
    tracking.log_images(logger, "val/examples", [png])
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "card.json").write_text("{}")
    tracking.log_export_artifact(logger, tmp_path / "exp")
    rd = tracking.run_dir(logger)
    tracking.finish(logger)
    assert rd.name.startswith("offline-run-")
    got = tracking.read_run_metrics(rd, wait_s=0)  # finish() waited for the exit record
    assert got["complete"], "finish() returned before the run file held its exit record"
    assert any(row.get("val/spearman") == 0.25 for row in got["history"])
    assert got["summary"]["val/spearman"] == 0.25
    assert list((rd / "files" / "media" / "images").rglob("*.png"))
    # a run file cut short (a killed job, or wandb-core still writing) reads as incomplete
    cut = tmp_path / "cut"
    cut.mkdir()
    whole = next(rd.glob("run-*.wandb")).read_bytes()
    (cut / "run-x.wandb").write_bytes(whole[: len(whole) // 2])
    partial = tracking.read_run_metrics(cut, wait_s=0)
    assert not partial["complete"] and len(partial["history"]) <= len(got["history"])
    run_id = json.loads((tmp_path / "out" / tracking.RUN_FILE).read_text())["id"]
    assert run_id in rd.name
    # a second attempt of the same job continues the same run
    again = tracking.make_logger(tmp_path / "out", name="t")
    assert again.version == run_id
    assert tracking.make_logger(tmp_path / "out", enabled=False) is None


def test_wandb_mode_env_is_honoured(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        tracking.wandb_mode()
    monkeypatch.delenv("WANDB_MODE")
    assert tracking.wandb_mode() == "offline"


def test_export_merges_predictors_and_writes_model_card(tmp_path):
    out = tmp_path / "out"
    d = export.export_predictors(out, [(_section("card", spearman=0.5), _writer("card", 1.0))])
    export.export_predictors(
        out, [(_section("critique", source="real", auroc=0.8), _writer("critique", 2.0))]
    )
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(
        ["README.md", "export.json", "card.json", "card.safetensors", "critique.json", "critique.safetensors"]
    )
    assert torch.equal(load_artifact(d, "card").tensors["w"], torch.full((2,), 1.0))
    manifest = export.read_manifest(d)
    assert set(manifest["predictors"]) == {"card", "critique"}
    card_md = (d / "README.md").read_text()
    assert "synthetic testbed" in card_md and "sha256:abc" in card_md and "| spearman | 0.5 |" in card_md
    # re-exporting one predictor replaces it and keeps the other
    export.export_predictors(out, [(_section("card", spearman=0.7), _writer("card", 3.0))])
    assert torch.equal(load_artifact(d, "card").tensors["w"], torch.full((2,), 3.0))
    assert load_artifact(d, "critique").config == {"v": 2.0}
    assert export.read_manifest(d)["predictors"]["card"]["metrics"]["spearman"] == 0.7
    assert not [p for p in out.iterdir() if p.name.startswith((".export.tmp", ".export.old"))]


def test_failed_export_leaves_previous_export_intact(tmp_path):
    out = tmp_path / "out"
    d = export.export_predictors(out, [(_section("card"), _writer("card", 1.0))])
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def broken(directory):
        _writer("card", 9.0)(directory)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export.export_predictors(out, [(_section("card"), broken)])
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    with pytest.raises(RuntimeError, match="did not produce"):
        export.export_predictors(out, [(_section("other"), lambda d: None)])
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_data_source_and_section_checks():
    from ade_runtime.traces.records import Attempt, Cost, EditRecord

    def rec(meta):
        a = Attempt(candidate=0, round=0, reasoning_tokens=0, prompt="p", cost=Cost(nfe=1))
        return EditRecord(
            id="r", instruction="i", source_image="s.png", backbone="b", attempts=[a], meta=meta
        )

    assert export.data_source([rec({"source": "ade-testbed"})]) == "testbed"
    assert export.data_source([rec({"seed": 3})]) == "real"
    with pytest.raises(ValueError, match="source"):
        export.DataInfo(path="p", fingerprint="f", source="synthetic", n_records=1)


def test_summary_plain_text(tmp_path, capsys):
    text = summary.print_summary(
        "CARD", {"test/mae": 0.25, "epochs": 3}, export_dir=tmp_path, notes={"resumed": "no"}
    )
    printed = capsys.readouterr().out
    assert "test/mae" in printed and "0.2500" in printed and str(tmp_path.resolve()) in printed
    assert text.splitlines()[0] == "== CARD =="


def test_cli_dispatch_errors():
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2
    assert cli.main(["nope"]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "ade_train.cli", "nope"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "unknown command" in proc.stderr and "Traceback" not in proc.stderr
