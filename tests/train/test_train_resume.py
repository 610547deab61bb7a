"""Reliability of `ade-train card`: SIGKILL mid-epoch, rerun with the same OUT resumes from the
checkpoint's epoch, continues the same W&B run, reaches the metrics of an uninterrupted run, and the
export directory is never half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.foreign import write_foreign_traces

from ade_runtime.predictors.card import CardPredictor
from ade_train import tracking
from ade_train.checkpointing import checkpoint_epoch


def _cmd(data, out):
    return [
        sys.executable, "-m", "ade_train.cli", "card", "--data", str(data), "--out", str(out),
        "--max-epochs", "6", "--data.batch_size=16", "--trainer.enable_progress_bar=false",
        "--data.text_encoder={kind: hashing, dim: 128}", "--trainer.log_every_n_steps=1",
    ]  # fmt: skip


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_SERVICE", None)  # a W&B service started by this test process is not the child's
    return env


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    data = write_foreign_traces(tmp_path / "acme", n=200, seed=4)
    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cmd(data, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and checkpoint_epoch(last) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    time.sleep(0.1)  # land inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = checkpoint_epoch(last)  # the checkpoint survived the kill intact
    export = out / "export"
    assert not export.exists() or sorted(p.name for p in export.iterdir())  # never a half-written export

    resumed = subprocess.run(_cmd(data, out), capture_output=True, text=True, env=_env(), check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming from {last} (epoch {epoch})" in resumed.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["finished"] and result["resumed_from_epoch"] == epoch
    assert sorted(p.name for p in export.iterdir()) == [
        "README.md",
        "card.json",
        "card.safetensors",
        "export.json",
    ]
    CardPredictor.from_pretrained(export)
    run_id = tracking.read_run_id(out)  # both attempts logged to the same W&B run
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)

    straight = tmp_path / "straight"
    ref = subprocess.run(_cmd(data, straight), capture_output=True, text=True, env=_env(), check=False)
    assert ref.returncode == 0, ref.stderr[-2000:]
    want = json.loads((straight / "result.json").read_text())["metrics"]
    got = result["metrics"]
    assert got["epochs"] == want["epochs"]
    # same data, split, init and epochs; only the shuffling order after the resume differs
    assert abs(got["test/spearman"] - want["test/spearman"]) < 0.15
    assert abs(got["test/mae"] - want["test/mae"]) < 0.35
