"""Shared builders for the trace tests (no tests here): tiny images and valid v1 records."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ade_runtime.traces import Attempt, Cost, EditRecord, Flaw, Judge, TraceDataset, TraceWriter


def png_bytes(size: tuple[int, int] = (8, 8), value: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def put_image(root: Path, rel: str, data: bytes | None = None) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes() if data is None else data)
    return rel


def record_dict(
    rid: str = "req-0", n_candidates: int = 2, n_rounds: int = 2, tokens: tuple[int, ...] = (0,)
) -> dict:
    """A valid record as a JSON object; images named images/<rid>/... (create them with ``put_images``)."""
    attempts = []
    for t in tokens:
        for c in range(n_candidates):
            for r in range(n_rounds):
                attempts.append(
                    {
                        "candidate": c,
                        "round": r,
                        "reasoning_tokens": t,
                        "prompt": f"Turn the red mug blue (c{c} r{r} t{t})",
                        "image": f"images/{rid}/c{c}_r{r}_t{t}.png",
                        "cost": {"nfe": 28, "latency_s": 4.25},
                        "scores": {"clip_t": 0.27, "clip_i": 0.875},
                        "judge": {
                            "score": 0.5,
                            "pass": r == n_rounds - 1 and c == 0,
                            "flaws": [{"kind": "wrong_color", "box": [0.5, 0.25, 0.75, 0.5]}],
                        },
                    }
                )
    return {
        "format": "ade-trace/1",
        "id": rid,
        "instruction": "Turn the red mug blue",
        "source_image": f"images/{rid}/source.png",
        "backbone": "flux-kontext",
        "category": "color",
        "meta": {"seed": 17},
        "attempts": attempts,
    }


def put_images(root: Path, obj: dict) -> dict:
    put_image(root, obj["source_image"])
    for a in obj["attempts"]:
        if isinstance(a, dict) and isinstance(a.get("image"), str):
            put_image(root, a["image"])
    return obj


def write_shard(root: Path, lines: list[Any], name: str = "traces-00000.jsonl") -> Path:
    """Write objects (json-dumped) or raw bytes/str lines to a shard, each ending with a newline."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    out = bytearray()
    for line in lines:
        if isinstance(line, bytes):
            out += line
        elif isinstance(line, str):
            out += line.encode("utf-8")
        else:
            out += json.dumps(line).encode("utf-8")
        out += b"\n"
    path.write_bytes(bytes(out))
    return path


def mutate(obj: dict, path: str, value: Any = None, delete: bool = False) -> dict:
    """A deep copy of ``obj`` with the dotted/indexed ``path`` (e.g. ``attempts.0.cost.nfe``) set or deleted."""
    out = copy.deepcopy(obj)
    parts = path.split(".")
    node: Any = out
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if delete:
        del node[last]
    else:
        node[last] = value
    return out


def simple_record(rid: str, source: str, image: str | None, passed: bool = True) -> EditRecord:
    return EditRecord(
        id=rid,
        instruction="add a hat",
        source_image=source,
        backbone="synthetic",
        category="add",
        meta={"seed": 1},
        attempts=[
            Attempt(
                candidate=0,
                round=0,
                reasoning_tokens=0,
                prompt="add a hat",
                cost=Cost(nfe=4, latency_s=0.5),
                image=image,
                scores={"clip_t": 0.25},
                judge=Judge(score=0.75, passed=passed, flaws=(Flaw("missing_object", (0.0, 0.0, 0.5, 0.5)),)),
            )
        ],
    )


def strip_judges(src: Path, dst: Path) -> None:
    """Copy a dataset without its judges: images byte for byte, records through TraceWriter."""
    records = list(TraceDataset(src))
    with TraceWriter(dst) as w:
        for rec in records:
            for rel in [rec.source_image] + [a.image for a in rec.attempts if a.image]:
                target = dst / Path(os.path.relpath(rec.resolve(rel), src))
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copyfile(rec.resolve(rel), target)
            rec.source_image = Path(os.path.relpath(rec.resolve(rec.source_image), src)).as_posix()
            for a in rec.attempts:
                a.judge = None
                if a.image:
                    a.image = Path(os.path.relpath(rec.resolve(a.image), src)).as_posix()
            w.write(rec)
