"""The newcomer's first hour: the README's first-hour block, run in order as written, at a tiny size.

The block is read from README.md (the ``<!-- first-hour -->`` marker) and run as one bash script with
``set -e`` in a scratch directory holding the Makefile, pyproject.toml and this venv (as ``.venv``),
so every command runs exactly as the README shows it; only the sizes shrink, through the Makefile's
own variables (``SAMPLE_REQUESTS``, ``CARD_ARGS``, ``CRITIQUE_ARGS``, ``CALIBRATE_ARGS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

MARKER = "<!-- first-hour -->"


def first_hour_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert MARKER in readme, "README.md lost its first-hour block"
    m = re.search(r"```bash\n(.*?)```", readme[readme.index(MARKER) :], re.S)
    assert m, "no bash block after the first-hour marker"
    return m.group(1)


TINY_CALIBRATION = """\
grid:
  tau_high: [0.7, 0.9]
  tau_low: [0.0, 0.1]
  s_max: [1, 2]
  card_quantile: [0.8]
  prune_threshold: [null]
  verify_band: [null]
"""


@pytest.mark.slow
def test_the_readme_first_hour_runs_in_order(tmp_path):
    block = first_hour_block()
    assert block.lstrip().startswith("make train-card"), (
        "the first hour starts with the README's first command"
    )
    work = tmp_path / "newcomer"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml"):  # copy2 keeps mtimes: the venv's install stamp stays newer
        shutil.copy2(REPO / name, work / name)
    venv = Path(sys.executable).parent.parent
    stamps = sorted(venv.glob(".installed-*"))
    if not stamps or stamps[-1].stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        # make would reinstall this venv from the scratch directory: `make test` installs first
        pytest.fail(f"{venv} is older than pyproject.toml: run `make install` (or `make test`) first")
    (work / ".venv").symlink_to(venv)
    (work / "tiny-calibrate.yaml").write_text(TINY_CALIBRATION)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))},
        "SAMPLE_REQUESTS": "120",
        "CARD_ARGS": "--max-epochs 2 --trainer.enable_progress_bar=false",
        "CRITIQUE_ARGS": "--max-epochs 1 --data.max_train_attempts=200 --data.max_eval_attempts=120 "
        "--trees_baseline=false --trainer.enable_progress_bar=false",
        "CALIBRATE_ARGS": "--config tiny-calibrate.yaml",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    # the heldout set of the block is shrunk the same way as the sample: the command is the README's
    script = "set -euo pipefail\nset -x\n" + block.replace("--requests 200", "--requests 40")
    run = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1500
    )
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"a first-hour command failed (the last '+' line is the one):\n{tail}"
    export = work / "checkpoints" / "card" / "export"
    assert {"card.json", "critique.json", "calibration.json"} <= {p.name for p in export.iterdir()}
    assert (work / "edited.png").is_file()
    # the first edit ran on the CARD-only export: its trace says where the budget came from
    traces = list((work / "traces" / "mine").glob("*.jsonl"))
    (line,) = [ln for p in traces for ln in p.read_text().splitlines() if ln.strip()]
    card = json.loads(line)["meta"]["ade"]["card"]
    assert card["budget_source"] in ("card", "prior:inferred")  # no category was passed: none is used
    assert "budget" in card and card["budget"] >= 1
