"""Bench parts: measurements that run apart from the main replay/live bench and land in its report.

A part is a module with a ``main(argv)`` that measures one thing (serving under load, set-up time,
a Ray job's throughput, ...) and calls :func:`write_part` with its figures, its own markdown section
and its targets. ``make bench`` runs every part before the main bench; ``write_report`` folds each
``OUT/parts/<name>.md`` into ``report.md`` and each part's targets into the targets table, so a part
can be re-measured alone (``make bench-<name>``) and the report re-rendered with ``--report-only``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

from ade_runtime.artifacts import atomic_write_bytes

__all__ = ["load_parts", "part_target", "write_part"]

PARTS_DIR = "parts"


def part_target(target: str, value: str, met: bool, gap: float) -> dict:
    """One row of the report's targets table (the same keys as the main bench's targets)."""
    return {"target": target, "value": value, "met": bool(met), "gap": float(gap)}


def write_part(
    out_dir: Path | str,
    name: str,
    figures: dict,
    markdown: list[str],
    targets: list[dict] | None = None,
    misses: list[str] | None = None,
    meta: dict | None = None,
) -> Path:
    """Atomically write ``OUT/parts/<name>.json`` and ``<name>.md``; returns the markdown path.

    ``markdown`` is the part's section (starting with its ``## `` heading); it is prefixed with the
    date and machine the figures were measured on.
    """
    if not name.isidentifier():
        raise ValueError(f"bench part name {name!r} must be an identifier (it names files)")
    d = Path(out_dir) / PARTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    meta = meta or {  # a part re-rendered from its figures keeps the date they were measured on
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {platform.python_version()}, CPU only",
    }
    doc = {"name": name, "meta": meta, "figures": figures, "targets": targets or [], "misses": misses or []}
    atomic_write_bytes(d / f"{name}.json", json.dumps(doc, indent=2, sort_keys=True, default=float).encode())
    head, *rest = markdown or [f"## {name}"]
    md = [
        head,
        "",
        f"_Measured by `make bench-{name.replace('_', '-')}` on {meta['date']} ({meta['machine']})._",
        *rest,
    ]
    atomic_write_bytes(d / f"{name}.md", ("\n".join(md).rstrip() + "\n").encode())
    return d / f"{name}.md"


def load_parts(out_dir: Path | str) -> list[dict]:
    """Every part written into ``OUT/parts``, in name order, each with its ``markdown`` text added."""
    d = Path(out_dir) / PARTS_DIR
    parts = []
    for js in sorted(d.glob("*.json")) if d.is_dir() else []:
        doc = json.loads(js.read_text())
        md = js.with_suffix(".md")
        doc["markdown"] = md.read_text() if md.exists() else ""
        parts.append(doc)
    return parts
