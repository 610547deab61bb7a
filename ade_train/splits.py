"""Request-id splits (train / val / calibration / test) shared by every training job, tied to the data.

``split_ids`` cuts the judged requests of a dataset, per category, by sha256(seed:id), so every rank,
worker and rerun sees the same split. ``ade-train card`` writes them to ``OUT/splits.json`` with the
dataset's fingerprint (``dataset_fingerprint``: sha256 over the judged request ids); the critique and
calibration read that file back with ``load_splits(out, fingerprint)``, which refuses a splits.json
written for another dataset (one line naming the file and the fix) instead of silently using ids
that do not exist in ``--data``.

Public API::

    ids = split_ids(records, fractions=(0.7, 0.1, 0.1, 0.1), seed=0)   # {split: [id, ...]}
    write_splits(out, data_dir, fingerprint, seed, fractions, ids)
    load_splits(out, fingerprint=None) -> {split: [id, ...]}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ade_runtime.artifacts import atomic_write_bytes, fingerprint_records
from ade_runtime.errors import InputError
from ade_runtime.files import read_json_file
from ade_runtime.traces import EditRecord

SPLITS = ("train", "val", "calibration", "test")
SPLITS_FILE = "splits.json"


def split_ids(
    records: list[EditRecord], fractions: Sequence[float] = (0.7, 0.1, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Request ids per split: within each category, ids ordered by sha256(seed:id) and cut by ``fractions``."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}"
        )
    strata: dict[str, list[str]] = defaultdict(list)
    for rec in records:
        strata[str(rec.category)].append(rec.id)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for cat in sorted(strata):
        ids = sorted(strata[cat], key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
        n, cum, start = len(ids), 0.0, 0
        for name, frac in zip(SPLITS, fractions, strict=True):
            cum += frac
            stop = n if name == SPLITS[-1] else round(cum * n)
            out[name].extend(ids[start:stop])
            start = stop
    return {s: sorted(v) for s, v in out.items()}


def dataset_fingerprint(records: Iterable[EditRecord]) -> str:
    """The data fingerprint every job records: sha256 over the ids of the dataset's judged requests."""
    return fingerprint_records(r.id for r in records)


def display_path(path: str | os.PathLike) -> str:
    """A data path as the model card and splits.json show it: relative to the working directory when
    inside it, else absolute (the same string for the same folder, whichever job wrote it)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def write_splits(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    fingerprint: str,
    seed: int,
    fractions: Sequence[float],
    splits: dict[str, list[str]],
) -> Path:
    """``OUT/splits.json``: the ids per split plus the data fingerprint they belong to (rank 0 only)."""
    path = Path(out_dir) / SPLITS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "data": display_path(data_dir),
        "data_fingerprint": fingerprint,
        "seed": int(seed),
        "fractions": [float(f) for f in fractions],
        "splits": splits,
    }
    atomic_write_bytes(path, (json.dumps(payload, sort_keys=True, indent=1) + "\n").encode())
    return path


def read_splits_file(out_dir: str | os.PathLike) -> dict | None:
    """The raw ``OUT/splits.json`` (None when absent); a file missing a split is an error naming it."""
    path = Path(out_dir) / SPLITS_FILE
    data = read_json_file(path, "delete it or rerun `ade-train card --force`", InputError)
    if data is None:
        return None
    missing = [s for s in SPLITS if s not in data.get("splits", {})]
    if missing:
        raise InputError(f"{path}: splits {missing} missing; rerun `ade-train card` into this OUT")
    return data


def load_splits(out_dir: str | os.PathLike, fingerprint: str | None = None) -> dict[str, list[str]]:
    """The split ids a CARD run wrote to ``OUT/splits.json`` (so the critique and calibration use the
    same requests). With ``fingerprint``, a file written for another dataset is refused."""
    path = Path(out_dir) / SPLITS_FILE
    data = read_splits_file(out_dir)
    if data is None:
        raise FileNotFoundError(f"{path}: no splits file; run `ade-train card --out {out_dir}` first")
    saved = data.get("data_fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise InputError(
            f"{path}: field data_fingerprint is {saved[:23]}... (dataset {data.get('data')}), but --data has "
            f"{fingerprint[:23]}...; these splits belong to another dataset: use another --out, or rerun "
            "`ade-train card --force` on this data"
        )
    return {s: list(data["splits"][s]) for s in SPLITS}
