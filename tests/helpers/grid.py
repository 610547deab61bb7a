"""Full attempt grids of fresh testbed requests, collected as ``ade-collect`` does and judged exactly:
what live-vs-replay tests replay (the testbed backbone is deterministic, so the grid holds exactly the
attempts the live loop samples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ade_runtime.backbones.base import EditRequest
from ade_runtime.cli.collect import run_grid
from ade_runtime.testbed import SyntheticBackbone, World, judge_attempt
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceWriter, load_records
from ade_runtime.traces.serving import build_record


def judged_grid(
    root: Path,
    *,
    n: int,
    seed: int,
    prefix: str,
    candidates: int,
    rounds: int,
    levels: list[int],
    scorer,
    critique=None,
) -> tuple[list[EditRequest], dict]:
    """(requests, {id: record}) of ``n`` requests from ``World(seed, size=48)``, each with its grid."""
    world = World(seed=seed, size=48)
    rng = np.random.default_rng(seed)
    backbone = SyntheticBackbone()
    requests = []
    with TraceWriter(root, fsync=False) as w:
        for i in range(n):
            r = world.sample_request(rng)
            req = EditRequest(
                make_image(r.source, r.source, world.size), r.instruction, f"{prefix}{i:02d}", r.category
            )
            logs = run_grid(
                backbone,
                req,
                candidates=candidates,
                rounds=rounds,
                levels=levels,
                seed=0,
                critique=critique,
                scorer=scorer,
            )
            record = build_record(req, logs, backbone.name, writer=w)
            for a, entry in zip(record.attempts, [e for e in logs if e.output is not None], strict=True):
                a.judge = judge_attempt(req.image, entry.output.image, req.instruction)
            w.write(record)
            requests.append(req)
    records, rejects = load_records(root, images="header")
    assert not rejects and len(records) == n, rejects
    return requests, {r.id: r for r in records}
