"""A v1 trace dataset the project did not generate (own categories, backbone, token levels, grid), and
CARD's labels on it. ``write_foreign_traces`` is imported by the other CARD / training tests.

The world: an instruction's adverb sets how hard the edit is; harder edits need more attempts
(pass probability per attempt falls with difficulty, rises with refinement round and reasoning).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from ade_runtime.policy import budget
from ade_runtime.traces import Attempt, Cost, EditRecord, Judge, TraceWriter, load_records

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


def test_labels_on_foreign_dataset_are_sane(tmp_path):
    root = write_foreign_traces(tmp_path / "acme", n=60)
    records, rejects = load_records(root)
    assert len(records) == 60 and not rejects
    unit = budget.cost_unit(records)
    assert unit == "nfe"  # no latency_s in these traces
    levels = budget.budget_levels(records)
    assert levels == [1, 2, 3, 4, 6]  # K in 1..3 times R in 1..2
    by_difficulty: dict[int, list[int]] = {}
    for rec in records:
        label = budget.budget_label(rec, levels, unit)
        assert label is not None
        if rec.meta["difficulty"] == 3:
            assert label.censored and label.level_index == len(levels)
        if not label.censored:
            assert label.point.attempts <= levels[label.level_index]
            assert label.reasoning_tokens in (0, 96)
        by_difficulty.setdefault(rec.meta["difficulty"], []).append(label.level_index)
    means = [sum(v) / len(v) for _, v in sorted(by_difficulty.items())]
    assert means == sorted(means) and means[0] < means[-1]
