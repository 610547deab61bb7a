"""A dependency-free progress line on stderr (the runtime must not need tqdm).

Redraws in place on a terminal, prints a line every ~10% otherwise (CI logs stay short).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", stream=None) -> Iterator[T]:
    stream = stream or sys.stderr
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    tty = hasattr(stream, "isatty") and stream.isatty()
    start = time.perf_counter()
    step = max(1, (total or 10) // 10)
    n = 0
    for item in items:
        yield item
        n += 1
        if tty or n % step == 0 or n == total:
            elapsed = time.perf_counter() - start
            rate = n / max(elapsed, 1e-9)
            of = f"/{total}" if total else ""
            end = "\r" if tty and n != total else "\n"
            when = f", ETA {format_seconds((total - n) / rate)}" if total and n < total else ""
            stream.write(f"{desc}: {n}{of} ({rate:.1f}/s, {format_seconds(elapsed)}{when}){end}")
            stream.flush()


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: an elapsed time or an ETA, short."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
