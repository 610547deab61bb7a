"""Checks beside the CARD-phrasing bench (``card_phrasing``): a gradient-boosted yardstick on CARD's
validation split, and ``ade-edit`` without ``--category`` on an easy and a hard request with the export
of ``make train`` (issue 22's done-when, run as a user runs it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ade_runtime.testbed.phrasing import TRAINING_FAMILIES
from ade_train.card.metrics import censored_nll

GBM_GRID = (  # (learning rate, leaves, L2, rounds): chosen by validation NLL, like CARD's settings
    (0.03, 7, 10.0, 100),
    (0.02, 7, 10.0, 50),
    (0.05, 15, 1.0, 50),
)


def gbm_validation(data: Path, pred_dir: Path) -> dict[str, Any]:
    """A gradient-boosted classifier (scikit-learn's HistGradientBoosting) on CARD's own features and
    labels (censored requests as the beyond class), its settings chosen on the validation split, beside
    CARD's and the inferred prior's validation NLL from the same run (``OUT/result.json``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ade_train.card.data import TraceDataModule

    saved = json.loads((pred_dir / "splits.json").read_text())
    dm = TraceDataModule(
        str(data), out_dir=str(pred_dir), cache_dir=str(pred_dir / "features"),
        split_fractions=tuple(saved["fractions"]), seed=int(saved["seed"]),
    )  # fmt: skip
    dm.setup("fit")
    train, val = dm.tensors("train"), dm.tensors("val")
    n = len(dm.levels) + 1

    def need(t):
        return torch.where(t["censored"], torch.full_like(t["level"], n - 1), t["level"]).numpy()

    rows = []
    for lr, leaves, l2, rounds in GBM_GRID:
        t0 = time.perf_counter()
        m = HistGradientBoostingClassifier(
            learning_rate=lr, max_leaf_nodes=leaves, l2_regularization=l2, max_iter=rounds,
            early_stopping=False, random_state=0,
        )  # fmt: skip
        m.fit(train["x"].numpy(), need(train))
        p = np.full((len(val["x"]), n), 1e-6)
        p[:, m.classes_] = m.predict_proba(val["x"].numpy())
        p /= p.sum(1, keepdims=True)
        nll = censored_nll(torch.tensor(p).log(), val["level"], val["censor_from"], val["censored"]).mean()
        rows.append({"learning_rate": lr, "leaves": leaves, "l2": l2, "rounds": rounds,
                     "val_nll": float(nll), "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    metrics = json.loads((pred_dir / "result.json").read_text())["metrics"]
    best = min(rows, key=lambda r: r["val_nll"])
    return {
        "gbm": rows,
        "gbm_best_val_nll": best["val_nll"],
        "card_val_nll": metrics.get("val/card_nll"),
        "inferred_prior_val_nll": metrics.get("val/inferred_prior_nll"),
        "constant_val_nll": metrics.get("val/prior_nll"),
        "n_val": int(len(val["x"])),
    }


EASY_HARD = (("easy", "color"), ("hard", "compose"))  # the testbed's easiest and hardest kinds


def ade_edit_check(export: Path, work: Path, seed: int = 3, allow_fallback: bool = False) -> dict[str, Any]:
    """``ade-edit`` without ``--category`` on an easy and a hard fresh testbed request with the export
    of ``make train``: the budget each gets and where it came from, as the trace records them."""
    import shutil
    import subprocess
    import sys

    from ade_runtime.testbed import World
    from ade_runtime.testbed.imageio import make_image, save_png
    from ade_runtime.traces import load_records

    if work.exists():  # a rerun starts afresh: the traces of the last check would clash on their ids
        shutil.rmtree(work)
    world, rng = World(seed=seed, phrasing=TRAINING_FAMILIES), np.random.default_rng(seed)
    out: dict[str, Any] = {}
    binary = Path(sys.executable).with_name("ade-edit")
    for name, cat in EASY_HARD:
        r = world.sample_request(rng, (cat,))
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        save_png(make_image(r.source, r.source, world.size), d / "source.png")
        cmd = [str(binary), "--backbone", "testbed", "--predictors", str(export), "--image",
               str(d / "source.png"), "--instruction", r.instruction, "--out", str(d / "edited.png"),
               "--trace-dir", str(d / "traces"), "--verifier", "emulated", "--id", f"check-{name}", "--json",
               *(["--allow-fallback"] if allow_fallback else [])]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"ade-edit failed ({res.returncode}): {res.stderr[-2000:]}")
        recs, _ = load_records(d / "traces")
        ade = recs[0].meta.get("ade") or {}
        card_log = ade.get("card") or {}  # present only when the policy takes its budget from CARD
        out[name] = {
            "instruction": r.instruction,
            "category_of_the_request": r.category,
            "budget": ade.get("budget"),
            "budget_source": card_log.get("budget_source") or "policy (CARD off: default_budget)",
            "category_inferred": card_log.get("category"),
            "compound_parts": card_log.get("compound_parts"),
            "use_card": bool(card_log),
            "attempts": len(recs[0].attempts),
        }
    out["differ"] = out["easy"]["budget"] != out["hard"]["budget"]
    return out
