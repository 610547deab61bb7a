"""CARD under a Lightning strategy: DDP on 2 CPU processes (gloo), same code path as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.foreign import write_foreign_traces

from ade_runtime.predictors.card import CardPredictor


@pytest.mark.slow
def test_card_trains_with_ddp_on_two_cpu_processes(tmp_path):
    data = write_foreign_traces(tmp_path / "acme", n=160, seed=5)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "ade_train.cli", "card", "--data", str(data), "--out", str(out), "--no-wandb",
        "--max-epochs", "8", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--data.text_encoder={kind: hashing, dim: 64}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("== CARD ==") == 1  # summary and export on rank 0 only
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["epochs"] == 8 and result["metrics"]["test/spearman"] > 0.3
    card = CardPredictor.from_pretrained(out / "export")
    assert card.config.levels == [1, 2, 3, 4, 5, 6]  # loop order: 3 candidates x 2 rounds
