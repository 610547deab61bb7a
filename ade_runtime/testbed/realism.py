"""Realism figures of the synthetic edit world (TESTBED), measured on requests simulated in memory.

``measure(n, seed)`` reports: single-pass pass rate, Best-of-8 with the judge picking, share of
requests no grid point solves, per-category single-pass rates, reasoning gain per category, the
refinement experiment (correct spatial feedback vs blind retry vs wrong region) and the AUROC of
the cheap scores against the judge's pass. docs/testbed.md quotes these figures.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ade_runtime.backbones.base import AttemptSpec
from ade_runtime.feedback import REGION_BOXES, feedback_prompt
from ade_runtime.stats import auroc
from ade_runtime.testbed.backbone import SyntheticBackbone
from ade_runtime.testbed.generate import GenConfig, simulate_request
from ade_runtime.testbed.imageio import read_scenes
from ade_runtime.testbed.judge import judge_scenes
from ade_runtime.testbed.world import World
from ade_runtime.traces.records import Flaw


def _far_box(box):
    """A region phrase box on the opposite side of the image (for the wrong-region control)."""
    cx, cy = 1 - (box[0] + box[2]) / 2, 1 - (box[1] + box[3]) / 2
    if abs(cx - 0.5) < 0.2 and abs(cy - 0.5) < 0.2:  # the opposite of the centre is the centre: use a corner
        cx, cy = 0.1, 0.1
    for b in REGION_BOXES.values():
        if b[2] - b[0] < 0.4 and b[0] <= cx <= b[2] and b[1] <= cy <= b[3]:
            return b
    return (0.0, 0.0, 0.3, 0.3)


def refinement_experiment(n: int, seed: int = 0, backbone: str = "bagel", size: int = 64) -> dict[str, float]:
    """Pass rate of one refinement round on failed first attempts: guided, blind, wrong region."""
    world, bb = World(seed, size), SyntheticBackbone(backbone)
    rng = np.random.default_rng([seed, 99])
    wins = defaultdict(list)
    for i in range(n):
        req = world.sample_request(rng)
        st = bb.state_for(req.source, size, req.instruction)
        out = bb.run(st, AttemptSpec(0, 0, 0, req.instruction, seed=i))
        j = judge_scenes(read_scenes(out.image)[0], req.source, req.instruction)
        if j.passed or not j.flaws:
            continue
        wrong = [Flaw(f.kind, _far_box(f.box)) for f in j.flaws]
        for name, prompt in (
            ("guided", feedback_prompt(req.instruction, j.flaws)),
            ("blind", req.instruction),
            ("wrong_region", feedback_prompt(req.instruction, wrong)),
        ):
            o2 = bb.run(st, AttemptSpec(0, 1, 0, prompt, seed=10_000 + i, input_image=out.image))
            wins[name].append(judge_scenes(read_scenes(o2.image)[0], req.source, req.instruction).passed)
    return {k: float(np.mean(v)) for k, v in wins.items()} | {"n_failed": len(wins["guided"])}


def measure(n: int = 300, seed: int = 0, backbone: str = "bagel", size: int = 64, **grid) -> dict:
    """Realism figures over ``n`` requests on the grid (defaults 8 candidates x 2 rounds x {0, 512})."""
    cfg = GenConfig(
        n_requests=n,
        seed=seed,
        backbone=backbone,
        image_size=size,
        candidates=grid.get("candidates", 8),
        rounds=grid.get("rounds", 2),
        reasoning_levels=grid.get("reasoning_levels", (0, 512)),
        workers=1,
    )
    single, bo8, never = [], [], []
    by_cat = defaultdict(lambda: defaultdict(list))
    ct, ci, lab = [], [], []
    for i in range(n):
        rec, _ = simulate_request(cfg, i)
        g = rec.attempt_grid()
        p0 = g[(0, 0, 0)].judge.passed
        single.append(p0)
        bo8.append(any(g[(c, 0, 0)].judge.passed for c in range(cfg.candidates)))
        never.append(not any(a.judge.passed for a in rec.attempts))
        t_hi = max(cfg.reasoning_levels)
        by_cat[rec.category]["single"].append(p0)
        by_cat[rec.category]["r0_t0"].append(
            np.mean([g[(c, 0, 0)].judge.passed for c in range(cfg.candidates)])
        )
        by_cat[rec.category]["r0_thi"].append(
            np.mean([g[(c, 0, t_hi)].judge.passed for c in range(cfg.candidates)])
        )
        for a in rec.attempts:
            ct.append(a.scores["clip_t"])
            ci.append(a.scores["clip_i"])
            lab.append(a.judge.passed)
    cats = {
        k: {
            "n": len(v["single"]),
            "pass_t0": float(np.mean(v["r0_t0"])),
            "pass_thi": float(np.mean(v["r0_thi"])),
            "reasoning_gain": float(np.mean(v["r0_thi"]) - np.mean(v["r0_t0"])),
        }
        for k, v in sorted(by_cat.items())
    }
    return {
        "testbed": True,
        "n": n,
        "single_pass": float(np.mean(single)),
        "best_of_8": float(np.mean(bo8)),
        "never_pass": float(np.mean(never)),
        "auroc_clip_t": auroc(ct, lab, undefined=0.5),
        "auroc_clip_i": auroc(ci, lab, undefined=0.5),
        "per_category": cats,
    }
