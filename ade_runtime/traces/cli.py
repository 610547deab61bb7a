"""``ade-traces``: validate a trace dataset or print its statistics (``docs/trace-format-v1.md``).

    ade-traces validate PATH [--rejects FILE] [--decode | --no-images]
    ade-traces stats PATH [--json]

``validate`` prints progress on stderr and, as the last line of stdout, one JSON object
``{"records": N, "valid": V, "rejected": R, "reasons": {...}, ...}``; exit 0 when every line is
a valid record, 1 when any is rejected, 2 when PATH is not a usable dataset (one-line error,
no traceback). Dependency-free on purpose: the runtime does not install tqdm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from ..errors import ADEError
from .reader import Reject, TraceDataset
from .staging import file_mode
from .stats import StatsAccumulator, format_stats


class _Progress:
    """A one-line progress report on stderr: rewritten in place on a terminal, sparse lines otherwise."""

    def __init__(self, stream: TextIO, n_shards: int, quiet: bool):
        self.stream, self.n_shards, self.quiet = stream, n_shards, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = self.last = time.monotonic()
        self.interval = 0.25 if self.tty else 10.0

    def update(self, lines: int, rejected: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self.last < self.interval):
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        text = f"ade-traces: {lines} lines, {rejected} rejected, {self.n_shards} shards, {rate:,.0f} lines/s"
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def done(self, lines: int, rejected: int) -> None:
        if not self.quiet:
            self.last = 0.0
            self.update(lines, rejected, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-traces", description="Validate or summarise edit-trace datasets (v1)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "validate", help="check every line of every shard; exit 0 valid, 1 rejects, 2 unusable"
    )
    v.add_argument("path", help="dataset directory holding *.jsonl / *.jsonl.gz shards (nested allowed)")
    v.add_argument("--rejects", metavar="FILE", help="write every reject as a JSON line to FILE")
    images = v.add_mutually_exclusive_group()
    images.add_argument(
        "--decode", action="store_true", help="fully decode every image (default: header only)"
    )
    images.add_argument("--no-images", action="store_true", help="check image paths only, never open files")
    v.add_argument(
        "--max-line-mib", type=float, default=16.0, help="longest accepted line in MiB (default 16)"
    )
    v.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s = sub.add_parser("stats", help="requests, attempts, pass rates by round / candidates, cost, coverage")
    s.add_argument("path", help="dataset directory")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.add_argument(
        "--images", choices=("none", "header", "decode"), default="none", help="image checks (default none)"
    )
    return p


def _validate(args: argparse.Namespace) -> int:
    mode = "decode" if args.decode else ("none" if args.no_images else "header")
    if not args.max_line_mib > 0:
        raise ADEError(f"--max-line-mib must be > 0, got {args.max_line_mib}")
    # rejects are streamed to the report, not kept: memory stays flat on a dataset of garbage
    ds = TraceDataset(args.path, mode, max_line_bytes=int(args.max_line_mib * (1 << 20)), keep_rejects=False)
    out = _AtomicLines(args.rejects) if args.rejects else None
    progress = _Progress(sys.stderr, len(ds.shards), args.quiet)
    reasons: Counter[str] = Counter()
    start = time.perf_counter()
    try:
        for item in ds.scan():
            if isinstance(item, Reject):
                reasons[item.reason] += 1
                if out is not None:
                    out.write(item.to_json())
            progress.update(ds.counts["valid"] + ds.counts["rejected"], ds.counts["rejected"])
        if out is not None:
            out.commit()
    finally:
        if out is not None:
            out.discard()
    seconds = time.perf_counter() - start
    valid, rejected = ds.counts["valid"], ds.counts["rejected"]
    progress.done(valid + rejected, rejected)
    summary = {
        "records": valid + rejected,
        "valid": valid,
        "rejected": rejected,
        "reasons": dict(sorted(reasons.items())),
        "shards": len(ds.shards),
        "images": mode,
        "seconds": round(seconds, 3),
    }
    print(json.dumps(summary), flush=True)
    return 1 if rejected else 0


def _stats(args: argparse.Namespace) -> int:
    ds = TraceDataset(args.path, images=args.images, keep_rejects=False)
    acc = StatsAccumulator()
    reasons: Counter[str] = Counter()
    for item in ds.scan():
        if isinstance(item, Reject):
            reasons[item.reason] += 1
        else:
            acc.add(item)
    stats: dict[str, Any] = acc.result()
    stats["rejected"] = ds.counts["rejected"]
    stats["reasons"] = dict(sorted(reasons.items()))
    print(json.dumps(stats) if args.json else format_stats(stats), flush=True)
    return 0


class _AtomicLines:
    """JSON lines streamed to a temporary file beside the target, moved into place on commit."""

    def __init__(self, target: str):
        self.target = Path(target)
        parent = self.target.parent
        try:  # like every --out: the folder is made before any work starts
            parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=parent)
            os.fchmod(fd, file_mode())  # readable like the shards, not mkstemp's 0600
        except OSError as exc:
            raise ADEError(f"--rejects {target}: cannot write there ({exc})") from exc
        self.f: TextIO | None = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        assert self.f is not None
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        assert self.f is not None
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
            os.unlink(self.tmp)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _validate(args) if args.command == "validate" else _stats(args)
    except ADEError as exc:
        print(f"ade-traces: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ade-traces: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
