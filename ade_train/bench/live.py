"""The bench's live measurements: the adaptive loop against Best-of-8 on the synthetic backbone, and
the controller's CPU time per decision (``make bench`` steps 3 and 4; ``run.py`` runs them in order).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress
from ade_runtime.traces import load_records


def live_loop(predictors: Predictors, n: int, seed: int, extra: dict[str, Predictors] | None = None) -> dict:
    """ADE and Best-of-8 on the same fresh requests from a shifted world, judged exactly, paired.

    GPU-seconds are the backbone's modelled seconds plus the modelled cost of every check the loop made
    (scores and critique of each finished attempt, each preview, each call of the expensive verifier),
    the same ``Overhead`` replay charges. Every run has the same verifier stack (the testbed's EMULATED
    VLM reward model): Best-of-8 checks each candidate with it, ADE only inside its certified band;
    ``best_of_8_cheap`` is Best-of-8 without it (cheap signals only), for what the verifier buys.
    """
    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.loop import AdaptiveEditor
    from ade_runtime.offline.intervals import paired_difference
    from ade_runtime.overhead import overhead_for
    from ade_runtime.testbed import SyntheticBackbone, World, judge_attempt, online_scores
    from ade_runtime.testbed.costs import get_cost
    from ade_runtime.testbed.imageio import make_image
    from ade_runtime.testbed.reward import EmulatedRewardModel

    world = World(seed=seed, clutter=(2, 8))
    rng = np.random.default_rng(seed)
    reqs = [world.sample_request(rng) for _ in range(n)]
    cost = get_cost("bagel")
    out = {}
    # "ade_no_refine": the calibrated policy with S_max = 1, i.e. fresh candidates instead of critique-led
    # refinement rounds; it isolates what the critique's feedback buys (or costs) live.
    reward = EmulatedRewardModel()
    runs = {
        "best_of_8": (predictors, "best_of_8", reward),
        "best_of_8_cheap": (predictors, "best_of_8", None),
        "ade": (predictors, "ade", reward),
        "ade_no_refine": (predictors, replace(predictors.policy, s_max=1), reward),
    }
    for name, preds in (extra or {}).items():
        runs[name] = (preds, "ade", reward)
    per_request: dict[str, list[float]] = {}
    for name, (preds, policy, verifier) in runs.items():
        backbone = SyntheticBackbone()
        ov = overhead_for("bagel", critique=preds.critique is not None, seconds_per_nfe=cost.s_per_nfe)
        editor = AdaptiveEditor(
            backbone, preds, policy=policy, scorer=online_scores, seed=seed, verifier=verifier
        )
        scores, passed, nfe, secs, overhead, calls = [], [], [], [], [], []
        for i, r in enumerate(progress(reqs, desc=f"live {name}")):
            src = make_image(r.source, r.source, world.size)
            res = editor.edit(EditRequest(src, r.instruction, f"live-{i}", r.category))
            j = judge_attempt(src, res.image, r.instruction) if res.image is not None else None
            scores.append(j.score if j else 0.0)
            passed.append(bool(j and j.passed))
            nfe.append(res.nfe)
            done = [a for a in res.attempts if a.output is not None and a.output.image is not None]
            previews = [
                a for a in res.attempts if a.output is not None and a.output.preview_image is not None
            ]
            checks = len(done) * (ov.score_s + ov.critique_s) + len(previews) * ov.preview_s
            secs.append(res.backbone_seconds + checks + res.verifier_seconds)
            overhead.append(res.overhead_seconds)
            calls.append(len(res.verifier_calls))
        per_request[name] = scores
        out[name] = {
            "requests": n,
            "mean_score": float(np.mean(scores)),
            "pass_rate": float(np.mean(passed)),
            "nfe_per_request": float(np.mean(nfe)),
            "modelled_gpu_seconds_per_request": float(np.mean(secs)),
            "controller_cpu_ms_per_request": 1000 * float(np.mean(overhead)),
            "verifier_calls_per_request": float(np.mean(calls)),
            "verifier": None if verifier is None else verifier.name,
        }
    for name, scores in per_request.items():
        out[name]["vs_best_of_8"] = paired_difference(scores, per_request["best_of_8"]).to_dict()
        out[name]["gpu_seconds_share_of_best_of_8"] = (
            out[name]["modelled_gpu_seconds_per_request"]
            / out["best_of_8"]["modelled_gpu_seconds_per_request"]
        )
    out["speedup_nfe"] = out["best_of_8"]["nfe_per_request"] / max(out["ade"]["nfe_per_request"], 1e-9)
    b8_calls = out["best_of_8"]["verifier_calls_per_request"]
    out["verifier_call_share"] = out["ade"]["verifier_calls_per_request"] / b8_calls if b8_calls else None
    return out


def controller_timing(predictors: Predictors, data: Path, repeats: int = 30) -> dict:
    """Median CPU milliseconds per decision at batch 1 (features computed inside, as in the loop)."""
    import torch

    torch.set_num_threads(1)
    records, _ = load_records(data, images="none")
    rec = next(r for r in records if any(a.image for a in r.attempts))
    from PIL import Image

    src = Image.open(rec.resolve(rec.source_image)).convert("RGB")
    att = next(a for a in rec.attempts if a.image)
    out_img = Image.open(rec.resolve(att.image)).convert("RGB")
    res = {}

    def med(fn) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts)

    if predictors.card is not None:
        res["card_ms"] = med(lambda: predictors.card.predict(rec.instruction, src))
    if predictors.critique is not None:
        res["critique_ms"] = med(lambda: predictors.critique.predict(src, out_img, rec.instruction))
    if predictors.calibrator is not None:
        feats = {k: v for k, v in att.scores.items() if not k.startswith("preview_")}
        feats["critique"] = 0.5
        res["calibration_ms"] = med(lambda: predictors.calibrator.predict_proba(feats))
    res["per_decision_ms"] = res.get("critique_ms", 0.0) + res.get("calibration_ms", 0.0)
    res["threads"] = 1
    return res
