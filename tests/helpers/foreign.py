"""A v1 trace dataset the project did not generate: its own categories, backbone, token levels and grid.

The world: an instruction's adverb sets how hard the edit is; harder edits need more attempts.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from ade_runtime.traces import Attempt, Cost, EditRecord, Judge, TraceWriter

ADVERBS = ("slightly", "clearly", "thoroughly", "impossibly")  # difficulty 0..3
CATEGORIES = {"warp": (200, 40, 40), "sketchify": (40, 200, 40), "relight": (40, 40, 200)}
OBJECTS = ("teapot", "bicycle", "lighthouse", "violin", "cactus", "anchor")


def write_foreign_traces(
    root: Path,
    n: int = 120,
    seed: int = 0,
    *,
    candidates: int = 3,
    rounds: int = 2,
    token_levels: tuple[int, ...] = (0, 96),
    unjudged_every: int = 7,
    backbone: str = "acme-edit-v2",
) -> Path:
    """Write ``n`` requests with a full (candidate x round x tokens) grid; returns ``root``."""
    rng = random.Random(seed)
    with TraceWriter(root, prefix="acme", fsync=False) as w:
        for i in range(n):
            cat = rng.choice(sorted(CATEGORIES))
            difficulty = rng.randrange(len(ADVERBS))
            rid = f"acme-{i:04d}"
            src = w.write_image(f"img/{rid}.png", Image.new("RGB", (24, 24), CATEGORIES[cat]))
            instruction = f"{cat} the {rng.choice(OBJECTS)} {ADVERBS[difficulty]}"
            attempts = []
            for t in token_levels:
                for c in range(candidates):
                    for r in range(rounds):
                        p = [0.9, 0.45, 0.15, 0.0][difficulty] + 0.15 * r + (0.1 if t else 0.0)
                        passed = rng.random() < min(p, 0.97) if difficulty < 3 else False
                        judged = unjudged_every == 0 or (i * 31 + c * 7 + r * 3) % unjudged_every != 0
                        judge = Judge(score=0.9 if passed else 0.2, passed=passed) if judged else None
                        attempts.append(
                            Attempt(
                                candidate=c, round=r, reasoning_tokens=t, prompt=instruction,
                                cost=Cost(nfe=20 + t // 8), judge=judge,
                            )
                        )  # fmt: skip
            w.write(
                EditRecord(
                    id=rid, instruction=instruction, source_image=src, backbone=backbone, attempts=attempts,
                    category=cat, meta={"site": "acme-labs", "difficulty": difficulty},
                )
            )  # fmt: skip
    return root
