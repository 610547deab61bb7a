"""The benchmark with the testbed's ``clip_t`` judge term switched off (TESTBED honesty run).

The testbed's cheap ``clip_t`` holds ``SEMANTIC_WEIGHT x (judge score - 0.6)``, a weak noisy view of
the ground-truth judge (docs/testbed.md). So that nobody mistakes the bench's cheap score for a
pixels-only one, the bench repeats its replay with that term removed: the closed-loop calibration
traces and the held-out traces get ``clip_t - w (judge - 0.6)`` (exact: the term is that expression
for every attempt whose image carries a scene, i.e. every finished testbed attempt; previews carry
none, so their scores are unchanged), the calibration is refit and certified on them from scratch,
and the same policies are replayed on the same held-out requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

from ade_runtime.testbed.judge import SEMANTIC_WEIGHT
from ade_runtime.traces import TraceWriter, load_records
from ade_runtime.traces.records import EditRecord

BIN = Path(sys.executable).parent
# a coarser threshold grid than the default's 6,480 settings (144), to keep make bench's time
COARSE_GRID = {
    "tau_high": [0.6, 0.8, 0.9, 0.95],
    "tau_low": [0.0, 0.1, 0.3],
    "s_max": [1, 3],
    "card_quantile": [0.7, 0.8, 0.9],
    "prune_threshold": [None],
    "verify_band": [None, [0.3, 0.7]],
}


def strip_term(records: list[EditRecord], weight: float = SEMANTIC_WEIGHT) -> list[EditRecord]:
    """Copies of ``records`` whose judged attempts' ``clip_t`` has no judge term."""
    out = []
    for rec in records:
        rec = deepcopy(rec)
        for a in rec.attempts:
            if a.judge is not None and "clip_t" in a.scores:
                a.scores["clip_t"] = float(a.scores["clip_t"] - weight * (a.judge.score - 0.6))
        out.append(rec)
    return out


def write_stripped(src: Path, dst: Path) -> Path:
    """``src`` with the term stripped, written to ``dst``; images are hard links (a symlinked folder
    would be refused as a path escape by the trace reader), copies across file systems."""
    if (dst / ".complete").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "images").exists():

        def link(a: str, b: str) -> None:
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)

        shutil.copytree(src / "images", dst / "images", copy_function=link)
    records, _ = load_records(src, images="none")
    with TraceWriter(dst, images="none") as w:
        for rec in strip_term(records):
            w.write(rec)
    (dst / ".complete").write_text("")
    return dst


def run(judged: Path, export: Path, heldout_records: list[EditRecord], work: Path, policies) -> dict:
    """Recalibrate on the stripped closed-loop traces and replay ``policies`` on the stripped held-out set."""
    from ade_runtime.offline.evaluate import evaluate
    from ade_runtime.predictors.bundle import Predictors

    data = write_stripped(judged, work / "closed-loop-pixels-only")
    out = work / "calibration-pixels-only"
    if not (out / "export" / "calibration.json").exists():
        (out / "export").mkdir(parents=True, exist_ok=True)
        for p in export.iterdir():  # CARD and the critique unchanged; the calibration is refit
            if p.is_file() and not p.name.startswith("calibration"):
                (out / "export" / p.name).write_bytes(p.read_bytes())
        import yaml

        from ade_train.calibrate.config import DEFAULT_CONFIG

        cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
        cfg["grid"] = COARSE_GRID
        (work / "calibrate-coarse.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [str(BIN / "ade-train"), "calibrate", "--data", str(data), "--out", str(out)]
        cmd += ["--split", "all", "--no-wandb", "--config", str(work / "calibrate-coarse.yaml")]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    preds = Predictors.load(out / "export")
    res = evaluate(
        strip_term(heldout_records), preds, policies, desc="bench replay (clip_t pixels only)", ci=0.9
    )
    report = out / "calibration_report.json"
    cert = json.loads(report.read_text()).get("certificate", {}) if report.is_file() else {}
    return {
        "policies": res["policies"],
        "certificate": {"status": cert.get("status"), "text": cert.get("text")},
        "policy": preds.policy.to_dict() if preds.policy else None,
        "note": "clip_t without its judge term (SEMANTIC_WEIGHT = 0): calibration refit and certified on the "
        "stripped closed-loop traces over a coarser threshold grid (144 settings instead of 6,480, for time), "
        "the same held-out requests replayed",
    }
