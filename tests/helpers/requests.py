"""A fresh ``ade-collect`` request file of testbed requests (source PNGs beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ade_runtime.testbed import World, save_png
from ade_runtime.testbed.imageio import make_image


def write_requests(d: Path, n: int, seed: int = 11) -> Path:
    """``d/requests.jsonl`` with ids q0..q{n-1}; returns its path."""
    d.mkdir(parents=True, exist_ok=True)
    world = World(seed=seed)
    lines = []
    for i in range(n):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), d / f"src{i}.png")
        lines.append(
            {"id": f"q{i}", "image": f"src{i}.png", "instruction": r.instruction, "category": r.category}
        )
    path = d / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path
