"""The summary printed at the end of every ``ade-train`` job: a metrics table and where things went.

Uses ``rich`` when it is installed and stdout is a terminal (Lightning's progress bars use it too),
plain aligned text otherwise, so logs and CI output stay readable.

Public API::

    text = print_summary("CARD", {"test/spearman": 0.61, ...}, export_dir=..., notes={"resumed": "epoch 3"})
    text = format_summary(...)   # the same, as plain text, without printing
    report_rejects("card", data_dir, dataset.rejects)   # the skipped bad records, one line each
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    try:
        return f"{float(value):.4f}"  # tensors and numpy scalars
    except (TypeError, ValueError):
        return str(value)


def format_summary(
    title: str,
    metrics: Mapping[str, Any],
    *,
    export_dir: str | Path | None = None,
    notes: Mapping[str, Any] | None = None,
) -> str:
    """Plain-text summary: a two-column metrics table, then notes and the export path."""
    rows = [(str(k), _fmt(v)) for k, v in sorted(metrics.items())]
    width = max([len("metric")] + [len(k) for k, _ in rows])
    lines = [f"== {title} ==", f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    for k, v in (notes or {}).items():
        lines.append(f"{k}: {v}")
    if export_dir is not None:
        lines.append(f"exported predictors: {Path(export_dir).resolve()}")
    return "\n".join(lines)


def print_summary(
    title: str,
    metrics: Mapping[str, Any],
    *,
    export_dir: str | Path | None = None,
    notes: Mapping[str, Any] | None = None,
    file: TextIO | None = None,
) -> str:
    """Print the summary (a rich table on a terminal) and return it as plain text."""
    text = format_summary(title, metrics, export_dir=export_dir, notes=notes)
    stream = file or sys.stdout
    if stream.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            Console = None  # noqa: N806
        if Console is not None:
            table = Table(title=title)
            table.add_column("metric")
            table.add_column("value", justify="right")
            for k, v in sorted(metrics.items()):
                table.add_row(str(k), _fmt(v))
            console = Console(file=stream)
            console.print(table)
            for k, v in (notes or {}).items():
                console.print(f"{k}: {v}")
            if export_dir is not None:
                console.print(f"exported predictors: [bold]{Path(export_dir).resolve()}[/bold]")
            return text
    print(text, file=stream, flush=True)
    return text


def report_rejects(command: str, data_dir: str | Path, rejects: Sequence[Any], limit: int = 20) -> str:
    """Print the bad records a job skipped, one line each (shard, line, id, reason), on rank 0 only;
    the job carries on with the valid ones. Returns the text (empty when nothing was rejected)."""
    if not rejects:
        return ""
    lines = [f"ade-train {command}: skipped {len(rejects)} bad record(s) of {data_dir} (not trained on):"]
    for r in list(rejects)[:limit]:
        lines.append(f"  {r.shard}:{r.line} id={r.id or '?'} {r.reason}: {r.message}")
    if len(rejects) > limit:
        lines.append(f"  ... and {len(rejects) - limit} more (ade-traces validate {data_dir} lists them all)")
    text = "\n".join(lines)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:
        print(text, file=sys.stderr, flush=True)
    return text
