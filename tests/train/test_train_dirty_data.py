"""ade-train on a dirty dataset: one corrupt source PNG and one cut line are skipped and reported
(shard, line, id, reason) by `ade-train card`, `critique` and `calibrate`; the rest trains and exports."""

import json
import shutil
from pathlib import Path

from helpers import FIXTURE_SMALL as FIXTURE

from ade_train.calibrate import cli_main as calibrate_main
from ade_train.card import cli_main as card_main
from ade_train.export import read_manifest

FAST = ["--trainer.enable_progress_bar=false", "--data.text_encoder={kind: hashing, dim: 64}"]


def dirty_copy(dst: Path) -> tuple[Path, str, int]:
    """testbed_small with req-000003's source image corrupted and the shard's last line cut in half."""
    shutil.copytree(FIXTURE, dst)
    shard = dst / "traces-00000.jsonl"
    lines = shard.read_text(encoding="utf-8").splitlines(keepends=True)
    bad = json.loads(lines[3])
    (dst / bad["source_image"]).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # a truncated line (a writer killed mid-write)
    shard.write_text("".join(lines), encoding="utf-8")
    return dst, bad["id"], len(lines)


def test_card_and_calibrate_skip_and_report_bad_records(tmp_path, capsys):
    data, bad_id, n_lines = dirty_copy(tmp_path / "dirty")
    out = tmp_path / "out"
    assert card_main(["--data", str(data), "--out", str(out), "--no-wandb", "--max-epochs", "1", *FAST]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 bad record(s)" in err
    assert f"traces-00000.jsonl:4 id={bad_id} corrupt_image" in err
    assert f"traces-00000.jsonl:{n_lines} " in err
    card = read_manifest(out / "export")["predictors"]["card"]["data"]
    assert card["n_rejected"] == 2 and card["n_records"] <= n_lines - 2

    assert calibrate_main(["--data", str(data), "--out", str(out), "--no-wandb"]) == 0
    err = capsys.readouterr().err
    assert "ade-train calibrate: skipped 2 bad record(s)" in err and f"id={bad_id} corrupt_image" in err
    manifest = read_manifest(out / "export")["predictors"]
    # the same data gives the same fingerprint and the same path in every section of the model card
    assert manifest["calibration"]["data"]["fingerprint"] == card["fingerprint"]
    assert manifest["calibration"]["data"]["path"] == card["path"]
    assert manifest["calibration"]["data"]["n_rejected"] == 2


def test_critique_skips_and_reports_bad_records(tmp_path, capsys):
    from test_critique_train import SMALL, _frozen_dino

    from ade_train.critique import cli_main as critique_main

    data, bad_id, n_lines = dirty_copy(tmp_path / "dirty")
    out = tmp_path / "out"
    dino = _frozen_dino(tmp_path / "dinov2-tiny")
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-wandb",
        "--encoder",
        str(dino),
        "--image-size",
        "64",
    ]
    assert critique_main([*args, *SMALL, "--max-epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 bad record(s)" in err and f"id={bad_id} corrupt_image" in err
    assert f"traces-00000.jsonl:{n_lines} " in err
    assert read_manifest(out / "export")["predictors"]["critique"]["data"]["n_rejected"] == 2
