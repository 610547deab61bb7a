"""How much of the testbed's cheap score is the judge: clip_t's AUROC against pass, with and without its
judge term (``online_scores(semantic_weight=0)``), on every attempt that stores its image.

Testbed only: a real CLIP-T has no such term; this is what makes the synthetic cheap score as useful as
it is, and the report shows it so nobody mistakes the testbed's ``clip_t`` for a pixels-only score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ade_runtime.testbed.judge import SEMANTIC_WEIGHT, online_scores
from ade_runtime.traces.records import EditRecord


def _open(rec: EditRecord, rel: str) -> Image.Image:
    with Image.open(rec.resolve(rel)) as im:
        im.load()
        return im.copy()  # keep the PNG text chunk: the testbed's scene lives there


def clip_t_auroc(records: Sequence[EditRecord], max_attempts: int = 4000) -> dict:
    from sklearn.metrics import roc_auc_score

    y, with_term, pixels = [], [], []
    for rec in records:
        todo = [a for a in rec.attempts if a.image and a.judge is not None]
        if not todo:
            continue
        src = _open(rec, rec.source_image)
        for a in todo:
            out = _open(rec, a.image)
            y.append(int(a.judge.passed))
            with_term.append(online_scores(src, out, rec.instruction)["clip_t"])
            pixels.append(online_scores(src, out, rec.instruction, semantic_weight=0.0)["clip_t"])
        if len(y) >= max_attempts:
            break
    y_arr = np.asarray(y)
    if len(set(y)) < 2:
        return {"n_attempts": len(y), "note": "one class only"}
    return {
        "n_attempts": len(y),
        "semantic_weight": SEMANTIC_WEIGHT,
        "auroc_clip_t": float(roc_auc_score(y_arr, with_term)),
        "auroc_clip_t_pixels_only": float(roc_auc_score(y_arr, pixels)),
    }
