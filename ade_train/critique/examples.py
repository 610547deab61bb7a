"""The critique head's examples and their per-patch targets, from any format-v1 trace dataset.

Every attempt that stored an output image and has a judge label is one ``CritiqueExample``; the
others are skipped and counted (``no_image``, ``no_judge``). ``cap_examples`` samples whole
requests (the within-request AUROC ranks every attempt of a request). Flaw boxes become per-patch
targets on the encoder's patch grid (class 0 = "none", 1 + i = ``kinds[i]``), the dense-label
recipe of patch-level defect maps. The tensors and loaders built from them are ``data.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ade_runtime.errors import InputError
from ade_runtime.offline.signals import attempt_features
from ade_runtime.traces.records import EditRecord, Flaw


@dataclass(frozen=True)
class CritiqueExample:
    """One judged attempt: what the head sees (images, instruction) and what it must predict."""

    record_id: str
    instruction: str
    source: Path
    attempt: Path
    passed: bool
    flaws: tuple[Flaw, ...] = ()
    key: tuple[int, int, int] = (0, 0, 0)  # (candidate, round, reasoning_tokens)
    scores: tuple[tuple[str, float], ...] = ()  # the attempt's cheap scores (the trees baseline reads them)
    weight: float = 1.0  # attempts of the request this example stands for (equal outputs merged)


@dataclass
class ExampleSet:
    """The examples of a dataset split plus what was skipped and why."""

    examples: list[CritiqueExample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def collect_examples(records: Iterable[EditRecord]) -> ExampleSet:
    """Every attempt with an image and a judge; the others are counted by reason, never silently lost."""
    out = ExampleSet()
    for rec in records:
        source = rec.resolve(rec.source_image)
        for att in rec.attempts:
            if att.image is None:
                out.skipped["no_image"] += 1
            elif att.judge is None:
                out.skipped["no_judge"] += 1
            else:
                out.examples.append(
                    CritiqueExample(
                        record_id=rec.id,
                        instruction=rec.instruction,
                        source=source,
                        attempt=rec.resolve(att.image),
                        passed=bool(att.judge.passed),
                        flaws=tuple(att.judge.flaws),
                        key=att.key,
                        scores=tuple(sorted(attempt_features(att).items())),
                    )
                )
    return out


def learn_kinds(examples: Iterable[CritiqueExample]) -> tuple[str, ...]:
    """The flaw vocabulary of the data, sorted; a dataset with no flaw boxes gets ``("flaw",)``."""
    kinds = sorted({f.kind for ex in examples for f in ex.flaws})
    return tuple(kinds) or ("flaw",)


def cap_examples(
    examples: Sequence[CritiqueExample],
    limit: int | None,
    seed: int,
    distinct: bool = False,
    per_request: int | None = None,
) -> list[CritiqueExample]:
    """At most ``limit`` examples, all the attempts of a seeded sample of whole requests (order kept).

    Whole requests, so that the within-request AUROC has every attempt of a request to rank;
    ``distinct`` keeps one example per distinct attempt image of a request (equal outputs that share
    a file) with ``weight`` = the attempts it stands for, so a training cap buys more distinct images
    without changing the pass rate the loss sees. ``per_request`` (training only) keeps a seeded sample
    of at most that many attempts of each request first, so that the cap spreads over more requests.
    """
    if per_request is not None:
        rows: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            rows.setdefault(ex.record_id, []).append(i)
        kept: list[int] = []
        for rid in sorted(rows):
            members = rows[rid]
            if len(members) > per_request:
                gen = torch.Generator().manual_seed(seed + int.from_bytes(rid.encode()[-4:], "little"))
                members = [
                    members[j]
                    for j in sorted(torch.randperm(len(members), generator=gen)[:per_request].tolist())
                ]
            kept.extend(members)
        examples = [examples[i] for i in sorted(kept)]
    if distinct:  # one example per (request, image, label), weighted by how many attempts it stands for
        counts = Counter((ex.record_id, ex.attempt, ex.passed) for ex in examples)
        first: dict[tuple, CritiqueExample] = {}
        for ex in examples:
            first.setdefault((ex.record_id, ex.attempt, ex.passed), ex)
        examples = [replace(ex, weight=float(counts[k])) for k, ex in first.items()]
    if limit is None or len(examples) <= limit:
        return list(examples)
    by_request: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_request.setdefault(ex.record_id, []).append(i)
    ids = sorted(by_request)
    gen = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for j in torch.randperm(len(ids), generator=gen).tolist():
        members = by_request[ids[j]]
        if keep and len(keep) + len(members) > limit:
            break
        keep.extend(members[:limit])
    return [examples[i] for i in sorted(keep)]


def _patch_centres(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = grid
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    return ys[:, None].expand(rows, cols), xs[None, :].expand(rows, cols)


def box_patches(box: Sequence[float], grid: tuple[int, int]) -> torch.Tensor:
    """Boolean [rows, cols]: patches whose centre lies in the box (the centre's patch for tiny boxes)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cy, cx = _patch_centres(grid)
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    if not inside.any():  # a box smaller than a patch still marks the patch it sits in
        r = min(grid[0] - 1, int((y0 + y1) / 2 * grid[0]))
        c = min(grid[1] - 1, int((x0 + x1) / 2 * grid[1]))
        inside[r, c] = True
    return inside


def patch_targets(flaws: Sequence[Flaw], kinds: Sequence[str], grid: tuple[int, int]) -> torch.Tensor:
    """Long [rows * cols]: 0 = none, 1 + i = kinds[i]; where boxes overlap the smaller box wins."""
    index = {k: i + 1 for i, k in enumerate(kinds)}
    target = torch.zeros(grid, dtype=torch.long)
    area = lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])  # noqa: E731
    for flaw in sorted(flaws, key=area, reverse=True):
        if flaw.kind not in index:
            raise InputError(f"flaw kind {flaw.kind!r} is not in the critique vocabulary {tuple(kinds)}")
        target[box_patches(flaw.box, grid)] = index[flaw.kind]
    return target.flatten()


def flaw_cover(flaws: Sequence[Flaw], grid: tuple[int, int]) -> torch.Tensor:
    """Bool [rows * cols]: patches inside any true flaw box (pointing accuracy counts hits here)."""
    cover = torch.zeros(grid, dtype=torch.bool)
    for flaw in flaws:
        cover |= box_patches(flaw.box, grid)
    return cover.flatten()


def true_boxes(flaws: Sequence[Flaw], max_boxes: int) -> torch.Tensor:
    """Float [max_boxes, 4], padded with -1: the judge's boxes for the IoU metric."""
    out = torch.full((max_boxes, 4), -1.0)
    for i, flaw in enumerate(flaws[:max_boxes]):
        out[i] = torch.tensor(flaw.box, dtype=torch.float32)
    return out
