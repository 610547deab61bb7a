"""The summary printed at the end of every ``ade-train`` job: a metrics table and where things went.

Uses ``rich`` when it is installed and stdout is a terminal (Lightning's progress bars use it too),
plain aligned text otherwise, so logs and CI output stay readable.

Public API::

    text = print_summary("CARD", {"test/spearman": 0.61, ...}, export_dir=..., notes={"resumed": "epoch 3"})
    text = format_summary(...)   # the same, as plain text, without printing
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
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
