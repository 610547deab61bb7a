"""Weak models are never shipped silently, and every job's W&B run is easy to find.

One OUT on the testbed fixture: CARD, a deliberately weak critique (learning rate ~0, one epoch) and
calibration, each with an offline W&B run. The summaries and the model card state the weak critique
("weak: AUROC x [lo, hi] not above chance") and CARD against its priors; a calibrated map worse than
its fallback is replaced by the fallback (said in the summary and the card). All runs sit under
OUT/wandb, each with its own id. Also the quality checks themselves, and Ctrl-C -> one line, exit 130.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import FIXTURES

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ade_runtime.policy.signals import CRITIQUE_FEATURE
from ade_train import quality, tracking
from ade_train.calibrate import cli_main as calibrate_main
from ade_train.card import cli_main as card_main
from ade_train.checkpointing import checkpoint_epoch
from ade_train.critique import cli_main as critique_main
from ade_train.export import read_manifest

FIXTURE = FIXTURES / "testbed_small"
TEXT = "--data.text_encoder={kind: hashing, dim: 64}"
NO_BAR = "--trainer.enable_progress_bar=false"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> dict:
    os.environ.pop("WANDB_MODE", None)  # offline runs (the default)
    out = tmp_path_factory.mktemp("weak")
    base = ["--data", str(FIXTURE), "--out", str(out), NO_BAR, TEXT]
    for main, extra in (
        (card_main, ["--max-epochs", "2"]),
        (critique_main, ["--max-epochs", "1", "--model.lr=1e-12", "--model.encoder_lr=1e-12",
                                     "--data.max_train_attempts=64", "--data.max_eval_attempts=200"]),
    ):  # fmt: skip
        assert main([*base, *extra]) == 0
    return {"out": out}


def test_weak_critique_is_stated_in_summary_result_and_model_card(out, capsys):
    result = json.loads((out["out"] / "critique" / "result.json").read_text())
    weak = [w for w in result["warnings"] if w.startswith("weak: AUROC")]
    assert weak and "not above chance" in weak[0]
    m = result["metrics"]
    assert m["test/auroc_lo"] <= 0.5 and m["test/auroc_lo"] <= m["test/auroc"] <= m["test/auroc_hi"]
    card_text = (out["out"] / "export" / "README.md").read_text()
    assert f"> **Warning:** {weak[0]}" in card_text
    # a rerun re-exports and says it again
    assert critique_main(["--data", str(FIXTURE), "--out", str(out["out"]), NO_BAR, TEXT]) == 0
    printed = capsys.readouterr().out
    assert "WARNING 1: weak: AUROC" in printed and "W&B run: " in printed


def test_card_reports_its_priors(out):
    result = json.loads((out["out"] / "result.json").read_text())
    m = result["metrics"]
    for key in ("val/card_nll", "val/prior_nll", "val/category_prior_nll"):
        assert np.isfinite(m[key])
    beats = m["val/card_nll"] < min(m["val/prior_nll"], m["val/category_prior_nll"])
    assert beats == (not any("CARD's validation NLL" in w for w in result["warnings"]))


def test_every_job_has_its_own_wandb_run_under_out_wandb(out, capsys, monkeypatch):
    # the calibrated map is made to lose against its fallback: the fallback is exported instead
    import ade_train.calibrate.controller as controller

    monkeypatch.setattr(
        controller, "calibration_warning", lambda p, f: "weak: the calibrated map is worse (forced)"
    )
    assert calibrate_main(["--data", str(FIXTURE), "--out", str(out["out"])]) == 0
    printed = capsys.readouterr().out
    assert "WARNING 1: weak: the calibrated map is worse (forced)" in printed
    cal = json.loads((out["out"] / "export" / "calibration.json").read_text())
    assert CRITIQUE_FEATURE not in json.dumps(cal.get("config", cal))
    manifest = read_manifest(out["out"] / "export")["predictors"]
    # the forced weak-map warning, then the certificate's (40 fixture requests certify nothing)
    warned = manifest["calibration"]["warnings"]
    assert warned[0] == "weak: the calibrated map is worse (forced)"
    assert [w.split(":")[0] for w in warned[1:]] == ["NOT certified"]

    o = out["out"]
    ids = {
        "card": json.loads((o / tracking.RUN_FILE).read_text()),
        "critique": json.loads((o / "critique" / tracking.RUN_FILE).read_text()),
        "calibrate": json.loads((o / "calibrate" / tracking.RUN_FILE).read_text()),
    }
    assert {k: v["name"] for k, v in ids.items()} == {k: k for k in ids}  # CARD's file is not renamed
    assert len({v["id"] for v in ids.values()}) == 3
    runs = sorted(p.name for p in (o / "wandb").glob("offline-run-*"))
    for v in ids.values():
        assert any(r.endswith(v["id"]) for r in runs), (v, runs)
    assert not (o / "critique" / "wandb").exists()
    assert "W&B run: " in printed and "/wandb/offline-run-" in printed
    assert (o / "plots" / "calibration_reliability.png").is_file() and (
        o / "plots" / "card_coverage.png"
    ).is_file()


def test_quality_checks():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.5
    good = labels + rng.normal(0, 0.5, 400)
    point, lo, hi = quality.auroc_interval(good, labels, [f"r{i // 4}" for i in range(400)])
    assert lo < point < hi and lo > 0.5 and quality.critique_warning(point, lo, hi) is None
    point, lo, hi = quality.auroc_interval(rng.random(400), labels)
    assert quality.critique_warning(point, lo, hi).startswith(f"weak: AUROC {point:.3f} [{lo:.3f}, {hi:.3f}]")
    assert quality.card_warning(0.9, 1.0, 0.95) is None
    assert "per-category prior 0.8000" in quality.card_warning(0.9, 1.0, 0.8)
    assert quality.calibration_warning((0.3, 0.2), (0.05, 0.18)).endswith(
        "the fallback map is exported instead"
    )
    assert quality.calibration_warning((0.05, 0.18), (0.3, 0.2)) is None
    assert quality.calibration_warning((0.05, 0.18), None) is None
    # a sharper map with a slightly worse ECE is the better forecast (Brier is proper, ECE is not)
    assert quality.calibration_warning((0.065, 0.128), (0.058, 0.154)) is None
    assert "Brier 0.2000 > 0.1800" in quality.calibration_warning((0.01, 0.2), (0.3, 0.18))


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130_then_resumes(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "ade_train.cli", "card", "--data", str(FIXTURE), "--out", str(out), "--no-wandb",
           "--max-epochs", "400", "--early_stopping_patience=null", NO_BAR, TEXT, "--data.batch_size=4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.is_file(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "ade-train card: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert checkpoint_epoch(last) >= 0  # the checkpoint the rerun resumes from is intact


def test_category_prior_leans_on_each_category_and_falls_back_to_the_constant_prior():
    import torch

    from ade_train.card.metrics import category_prior_probs, prior_probs

    level = torch.tensor([0] * 30 + [2] * 30)
    censored = torch.zeros(60, dtype=torch.bool)
    cats = ["easy"] * 30 + ["hard"] * 30
    rows = category_prior_probs(level, censored, cats, ["easy", "hard", "unseen"], n_classes=4)
    assert torch.allclose(rows.sum(-1), torch.ones(3))
    assert rows[0].argmax() == 0 and rows[1].argmax() == 2
    assert torch.allclose(rows[2], prior_probs(level, censored, 4, 1)[0])
