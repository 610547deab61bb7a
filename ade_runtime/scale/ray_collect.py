"""``ade-collect --ray``: the attempt grid of every request on a Ray cluster, exactly once.

The driver reads and checks the request file (as ``ade-collect`` does), drops the requests whose
record is already in ``--out``, and hands the rest to Ray Data (``from_items`` + ``map_batches``
with an actor class). Each actor (``CollectWorker``) holds one backbone on its GPU (``num_gpus``),
loaded once, with the critique, scorer and verifier; it opens its own ``TraceWriter`` with a prefix
of its own (``ray-<token>``), so every process appends to its own shards of the one output dataset.

Exactly once (``claims.py``): a worker claims a request's id on disk before writing its record and
marks it done after; a dead worker's task is retried on a restarted actor (``--max-retries``), which
skips what the dead one finished and takes over what it had not. The driver checks at the end that
every request it handed out is in the dataset once, and a rerun skips what is there.

Nothing here imports Ray at module level; ``collect_on_ray`` imports it (``require_ray``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.errors import ADEError, InputError
from ade_runtime.scale.claims import ClaimBook, claim_key, create_exclusive, forget_done
from ade_runtime.scale.options import FAULT_ENV, Progress, RayOptions, require_ray, start_ray
from ade_runtime.traces import RecordRefused

PROG = "ade-collect --ray"
FAULT_MODES = ("mid_line", "after_line")
MAX_BLOCKS = 2000  # requests per Ray Data block >= n / MAX_BLOCKS: the unit a dead worker's retry redoes


def fault_from_env() -> tuple[str, str] | None:
    """Test-only fault injection: ``ADE_RAY_FAULT=<request id>:<mode>`` makes the worker that collects
    that request die once per output dataset, ``mid_line`` after writing half of its record line
    (what a crash during the write leaves), ``after_line`` after the whole line but before the done
    marker (what a crash between the write and the acknowledgement leaves). Never set it in production."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    rid, _, mode = spec.rpartition(":")
    if not rid or mode not in FAULT_MODES:
        raise InputError(f"{FAULT_ENV}={spec!r}: write it as <request id>:{'|'.join(FAULT_MODES)}")
    return rid, mode


class CollectWorker:
    """A Ray Data actor: one backbone, one trace writer, the claims of the output dataset."""

    def __init__(self, config: dict[str, Any], job: str, fault: tuple[str, str] | None = None) -> None:
        # this module is the --ray half of ade-collect (only its main calls collect_on_ray), so it may
        # use ade-collect's own Collector, which holds the parsed options
        from ade_runtime.cli.collect import Collector
        from ade_runtime.traces import TraceWriter

        self.args = argparse.Namespace(**config)
        self.out = Path(self.args.out)
        self.prefix = f"ray-{uuid.uuid4().hex[:12]}"  # a new one per process, restarts included
        self.collector = Collector(self.args, self.args.levels, PROG)
        self.writer = TraceWriter(self.out, prefix=self.prefix, check_existing_ids=False)
        self.claims = ClaimBook(self.out, self.prefix, job)
        self.fault = fault
        self._metrics = _metrics()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self._one(json.loads(s)) for s in batch["request"]]
        attempts = sum(r[2] for r in rows)
        if self._metrics is not None and rows:
            self._metrics[0].inc(len(rows))
            if attempts:
                self._metrics[1].inc(attempts)
        return {
            "id": np.array([r[0] for r in rows], dtype=object),
            "status": np.array([r[1] for r in rows], dtype=object),
            "attempts": np.array([r[2] for r in rows], dtype=np.int64),
            "message": np.array([r[3] for r in rows], dtype=object),
        }

    def _one(self, item: dict[str, Any]) -> tuple[str, str, int, str]:
        from ade_runtime.cli.collect import RequestLine, load_request

        rid = item["id"]
        line = RequestLine(rid, Path(item["image"]), item["instruction"], item["category"])
        try:
            request = load_request(line)
        except (OSError, InputError) as exc:
            return rid, "rejected", 0, str(exc)
        claim = self.claims.claim(rid)
        if claim is None:
            return rid, "skipped", 0, "already written (or claimed by a live worker)"
        try:
            if claim.tries > self.args.max_retries:
                return (
                    rid,
                    "failed",
                    0,
                    f"{claim.tries} worker(s) died collecting it (--max-retries); rerun to retry",
                )
            try:
                record, images = self.collector.record(request)
            except InputError as exc:  # the backbone refuses this request
                return rid, "rejected", 0, str(exc)
            if not record.attempts:
                return rid, "failed", 0, "every attempt failed in the backbone"
            if self.fault is not None and self.fault[0] == rid and self.fault[1] == "mid_line":
                self._die_mid_line(record)
            try:  # the record and its images, all or nothing
                self.writer.write(record, images=images)
            except RecordRefused as exc:
                return rid, "rejected", 0, str(exc)
            if self.fault is not None and self.fault[0] == rid and self.fault[1] == "after_line":
                self._die(rid)
            self.claims.finish(claim)
            return rid, "written", len(record.attempts), ""
        finally:
            self.claims.release(claim)

    def _die(self, rid: str) -> None:
        """Test-only: exit the process at once, the first time only (a marker in the claims dir)."""
        if create_exclusive(self.claims.dir / f"fault-{claim_key(rid)}", self.prefix):
            print(f"{PROG}: {FAULT_ENV}: worker {self.prefix} dies on {rid}", file=sys.stderr, flush=True)
            os._exit(1)

    def _die_mid_line(self, record: Any) -> None:
        marker = self.claims.dir / f"fault-{claim_key(record.id)}"
        if marker.exists():
            return
        line = json.dumps(record.to_json(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        shard = (
            self.writer.shards_written[-1]
            if self.writer.shards_written
            else self.out / f"{self.prefix}-00000.jsonl"
        )
        fd = os.open(shard, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, line[: len(line) // 2])
        os.fsync(fd)
        os.close(fd)
        self._die(record.id)


def _metrics() -> tuple[Any, Any] | None:
    """Counters shown in Ray's dashboard (metrics view) while the job runs; None where unavailable."""
    try:
        from ray.util.metrics import Counter as RayCounter

        return (
            RayCounter("ade_collect_requests", description="requests collected by ade-collect --ray"),
            RayCounter("ade_collect_attempts", description="attempts run by ade-collect --ray"),
        )
    except Exception:  # metrics are a convenience; the job runs without them
        return None


def _items(todo: list[Any]) -> list[dict[str, str]]:
    return [
        {
            "request": json.dumps(
                {
                    "id": r.id,
                    "image": str(Path(r.image).resolve()),
                    "instruction": r.instruction,
                    "category": r.category,
                }
            )
        }
        for r in todo
    ]


def _run(ray: Any, opts: RayOptions, args: argparse.Namespace, todo: list[Any], out: Path, levels: list[int]):
    """Run the Ray Data job over ``todo``; the per-request outcomes and the workers used."""
    workers, gpus = opts.resolve(ray)
    config = {k: v for k, v in vars(args).items() if not k.startswith("ray")} | {
        "out": str(out.resolve()),
        "levels": levels,
    }
    print(
        f"{PROG}: {len(todo)} requests to collect on {workers} worker(s), {gpus:g} GPU(s) each",
        file=sys.stderr,
    )
    ds = ray.data.from_items(_items(todo), override_num_blocks=min(len(todo), MAX_BLOCKS))
    ds = ds.map_batches(
        CollectWorker,
        fn_constructor_kwargs={"config": config, "job": uuid.uuid4().hex[:12], "fault": fault_from_env()},
        batch_size=1,
        batch_format="numpy",
        **opts.actor_args(ray, workers, gpus),
    )
    bar = Progress(PROG, len(todo))
    outcomes: dict[str, tuple[str, str]] = {}
    try:
        for row in ds.iter_rows():
            outcomes[row["id"]] = (row["status"], row["message"])
            bar.update(1, int(row["attempts"]))
    except ray.exceptions.RayError as exc:
        raise ADEError(
            f"the Ray job stopped ({ray_error_line(exc)}); every record written so far is kept: "
            "run the same command again to resume"
        ) from None
    return outcomes, workers, gpus, bar


def _rates(bar: Progress) -> dict[str, float | None]:
    """attempts/s over the job, the seconds to the first finished request (the workers' start), and
    requests/s after it (the steady rate, None with fewer than 3 requests)."""
    wall = max(time.monotonic() - bar.t0, 1e-9)
    first = bar.stamps[0] - bar.t0 if bar.stamps else None
    span = bar.stamps[-1] - bar.stamps[0] if len(bar.stamps) >= 3 else 0.0
    return {
        "attempts_per_second": round(bar.attempts / wall, 3),
        "first_request_seconds": None if first is None else round(first, 3),
        "steady_requests_per_second": round((len(bar.stamps) - 1) / span, 3) if span > 0 else None,
    }


def ray_error_line(exc: BaseException) -> str:
    """The cause of a Ray error in one line: the last line of the worker's traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return (cause or lines or [type(exc).__name__])[0]


def collect_on_ray(
    args: argparse.Namespace, opts: RayOptions, reqs: list[Any], bad: list[str], out: Path, levels: list[int]
) -> int:
    """``ade-collect --ray``: what ``_collect`` does, on Ray; the same JSON summary line plus Ray's figures."""
    from ade_runtime.cli.collect import collected_ids

    ray = require_ray("ade-collect")
    done = collected_ids(out, PROG)
    todo, unreadable = [], []
    for r in reqs:
        if r.id not in done:
            (todo if Path(r.image).is_file() else unreadable).append(r)
    for r in unreadable:  # the cheap check before any worker starts; workers decode and check the rest
        print(f"ade-collect: rejected {r.id}: image {r.image} does not exist", file=sys.stderr)
    skipped = len(done & {r.id for r in reqs})
    print(f"{PROG}: {len(reqs)} requests, {skipped} already collected", file=sys.stderr)
    stale = forget_done(out, [r.id for r in todo])
    if stale:
        print(
            f"{PROG}: {stale} request(s) marked done have no record in --out: collecting them again",
            file=sys.stderr,
        )
    t0 = time.monotonic()
    outcomes: dict[str, tuple[str, str]] = {}
    workers, gpus = 0, 0.0
    rates: dict[str, float | None] = dict.fromkeys(
        ("attempts_per_second", "first_request_seconds", "steady_requests_per_second")
    )
    if todo:
        started = start_ray(ray, opts, "ade-collect")
        try:
            outcomes, workers, gpus, bar = _run(ray, opts, args, todo, out, levels)
            rates = _rates(bar)
        finally:
            if started:
                ray.shutdown()
    for rid, (status, message) in outcomes.items():
        if status in ("rejected", "failed"):
            print(f"ade-collect: {status} {rid}: {message}", file=sys.stderr)
    counts = Counter(status for status, _ in outcomes.values())
    missing = _check_once(out, [r.id for r in todo], outcomes)
    summary = {
        "shard": "ray",
        "written": counts["written"],
        "skipped": skipped + counts["skipped"],
        "failed": counts["rejected"] + counts["failed"] + len(unreadable),
        "rejected_lines": len(bad),
        "missing": len(missing),
        "workers": workers,
        "gpus_per_worker": gpus,
        "wall_seconds": round(time.monotonic() - t0, 3),
        **rates,
    }
    print(json.dumps(summary))
    if missing:
        print(
            f"{PROG}: {len(missing)} request(s) not in --out after the job (e.g. {missing[0]!r}); "
            "run the same command again to collect them",
            file=sys.stderr,
        )
    return 0 if summary["failed"] == 0 and not bad and not missing else 1


def _check_once(out: Path, handed: list[str], outcomes: dict[str, tuple[str, str]]) -> list[str]:
    """The handed-out requests that should be in ``out`` and are not; raises if one is there twice."""
    from ade_runtime.traces import EditRecord, TraceDataset

    if not handed:
        return []
    seen: Counter = Counter()
    ds = TraceDataset(out, images="none")
    for rec in ds.scan():
        if isinstance(rec, EditRecord):
            seen[rec.id] += 1
    dup = [r.id for r in ds.rejects if r.reason == "duplicate_id"]
    if dup:
        raise ADEError(
            f"--out {out}: request {dup[0]!r} was written twice; please report this with the shards"
        )
    skip = {rid for rid, (status, _) in outcomes.items() if status in ("rejected", "failed")}
    return [rid for rid in handed if rid not in skip and not seen[rid]]
