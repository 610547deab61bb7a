"""Judge a logged trace dataset: fill every missing ``judge`` and write a new v1 dataset.

Layout and resumability. The run works in ``OUT.partial/``: the journal
(``judge-journal.ndjson``, one fsynced line per judged attempt) is written while judging; when
every pending attempt is journaled, the records are written through ``TraceWriter`` into the same
directory, images are hard-linked (copied when linking fails; the inputs are never modified),
``judge-summary.json`` is written, and the directory is renamed to ``OUT`` in one step. ``OUT``
therefore only ever appears complete. A killed run is resumed by running the same command: the
journal's attempts are not judged again; leftover shards of an interrupted finalisation are
removed first. Running the command again on a finished ``OUT`` does nothing (idempotent).

Attempts that already carry a judge are kept as they are. Attempts without an image cannot be
judged by an image judge: their judge stays null and they are counted (``no_image``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ade_runtime.errors import ADEError, InputError
from ade_runtime.traces import EditRecord, Reject, TraceDataset, TraceWriter, reject_lines
from ade_runtime.traces.staging import file_mode

from .base import AttemptRef, Judge, JudgeFailure, JudgeItem, JudgeResult
from .human import HumanJudge
from .journal import JOURNAL_NAME, Journal

SUMMARY_NAME = "judge-summary.json"
SHARD_PREFIX = "traces"
MAX_LISTED = 1000  # rejects / unmatched rows listed in the summary (all are counted)


@dataclass
class _Task:
    ref: AttemptRef
    instruction: str
    category: str | None
    source: Path
    output: Path | None


def _records(traces: Path, limit: int | None, images: str) -> tuple[TraceDataset, Any]:
    ds = TraceDataset(traces, images=images)

    def gen():
        n = 0
        for item in ds.scan():
            if isinstance(item, EditRecord):
                if limit is not None and n >= limit:
                    return
                n += 1
            yield item

    return ds, gen()


def _load(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as im:
        im.load()
        out = im.convert("RGB")
        # Keep text chunks: some judges read metadata (the testbed reads its scene from one).
        out.info.update({k: v for k, v in im.info.items() if isinstance(v, str)})
        return out


def _run_batch(judge: Judge, tasks: list[_Task]) -> list[JudgeResult | JudgeFailure]:
    """Load the images of a batch and judge it; every task gets exactly one outcome."""
    items, out = [], {}
    for t in tasks:
        try:
            src, dst = (_load(t.source), _load(t.output)) if judge.needs_images else (None, None)
        except OSError as exc:
            out[t.ref] = JudgeFailure(t.ref, "image_error", f"cannot read an image of {t.ref}: {exc}")
            continue
        items.append(JudgeItem(t.ref, t.instruction, src, dst, t.category))
    if items:
        try:
            results = judge.judge(items)
            if len(results) != len(items):
                raise InputError(
                    f"judge {judge.name} returned {len(results)} outcomes for {len(items)} attempts"
                )
        except (ADEError, OSError, RuntimeError, ValueError) as exc:
            results = [JudgeFailure(it.ref, "judge_error", f"{type(exc).__name__}: {exc}") for it in items]
        for it, res in zip(items, results, strict=True):
            out[it.ref] = res
    return [out[t.ref] for t in tasks]


def _place_image(src: Path, dst: Path) -> str:
    """Hard-link ``src`` at ``dst`` (copy atomically when linking is impossible); 'linked' or 'copied'."""
    if dst.exists():
        return "linked" if os.path.samefile(src, dst) else "copied"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return "linked"
    except OSError:
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-", suffix=dst.suffix)
        os.fchmod(fd, file_mode())
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return "copied"


def _rebase(rec: EditRecord, traces: Path, rel: str) -> tuple[str, Path]:
    """(path relative to the dataset root, absolute source path) of an image a record names."""
    absolute = rec.resolve(rel)
    return Path(os.path.relpath(absolute, traces)).as_posix(), absolute


def _finished(out: Path, traces: str, judge_name: str) -> dict[str, Any] | None:
    summary = out / SUMMARY_NAME
    if not summary.is_file():
        return None
    try:
        obj = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return obj if obj.get("traces") == traces and obj.get("judge") == judge_name else None


# Failures that say nothing about the attempt (the judge or the network broke): retried on resume.
TRANSIENT = frozenset({"judge_error", "http_error", "timeout", "image_error"})
ABORT_AFTER = 3  # this many first batches failing entirely with judge_error: the judge is misconfigured


IMAGE_CHECK = "header"  # both passes check images alike, so pass 2 accepts what pass 1 accepted


def _plan(traces: Path, limit: int | None, judge: Judge, journal: Journal, retry_failed: bool):
    """Pass 1: the attempts to judge, every attempt's ref, counts, and the rejects."""
    ds, items = _records(traces, limit, IMAGE_CHECK)
    tasks: list[_Task] = []
    refs: set[AttemptRef] = set()
    counts: Counter = Counter()
    for rec in items:
        if isinstance(rec, Reject):
            continue
        counts["records"] += 1
        for a in rec.attempts:
            ref = AttemptRef(rec.id, a.candidate, a.round, a.reasoning_tokens)
            refs.add(ref)
            counts["attempts"] += 1
            prior = journal.done.get(ref)
            again = isinstance(prior, JudgeFailure) and (retry_failed or prior.reason in TRANSIENT)
            if a.judge is not None:
                counts["kept"] += 1
            elif prior is not None and not again:
                counts["from_journal"] += 1
            elif a.image is None and judge.needs_images:
                counts["no_image"] += 1
            else:
                out_img = None if a.image is None else rec.resolve(a.image)
                tasks.append(
                    _Task(ref, rec.instruction, rec.category, rec.resolve(rec.source_image), out_img)
                )
    return tasks, refs, counts, list(ds.rejects)


class Tally:
    """What the driver does with each judged batch, whoever judged it: journal it (the main thread or
    the Ray driver alone writes the journal), count it, and stop the run when the first ``ABORT_AFTER``
    batches all failed with judge_error (a misconfigured judge)."""

    def __init__(self, judge_name: str) -> None:
        self.judge_name = judge_name
        self.now: Counter = Counter()
        self.broken: list[JudgeFailure] = []

    def add(self, outcomes: list[JudgeResult | JudgeFailure], journal: Journal) -> None:
        journal.record(outcomes)
        for o in outcomes:
            self.now["judged" if isinstance(o, JudgeResult) else "failed"] += 1
        if self.now["judged"] == 0 and all(getattr(o, "reason", "") == "judge_error" for o in outcomes):
            self.broken.append(outcomes[0])
        if len(self.broken) >= ABORT_AFTER:
            raise ADEError(
                f"judge {self.judge_name} raised on each of the first {ABORT_AFTER} batches, e.g. "
                f"{self.broken[0].message}; fix the judge and run the same command again to resume"
            )


def _judge_tasks(
    judge: Judge, tasks: list[_Task], journal: Journal, workers: int, batch_size: int, show: bool
):
    """Judge in batches on ``workers`` threads; the main thread alone writes the journal."""
    from tqdm.auto import tqdm

    batches = iter([tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)])
    tally = Tally(judge.name)
    bar = tqdm(total=len(tasks), unit="attempt", desc=f"judging ({judge.name})", disable=not show)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future] = set()
        while True:
            while len(pending) < 2 * workers and (batch := next(batches, None)) is not None:
                pending.add(pool.submit(_run_batch, judge, batch))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                outcomes = fut.result()
                try:
                    tally.add(outcomes, journal)
                except ADEError:
                    for f in pending:
                        f.cancel()
                    bar.close()
                    raise
                bar.update(len(outcomes))
    bar.close()
    return tally.now, time.monotonic() - t0


def _write_dataset(
    traces: Path, limit: int | None, work: Path, journal: Journal, accepted: set[str]
) -> tuple[Counter, int]:
    """Pass 2: the records pass 1 accepted, through TraceWriter with the journal's labels, images linked."""
    for stale in work.glob(f"{SHARD_PREFIX}-*.jsonl"):
        stale.unlink()  # left by a finalisation that was killed
    placed: Counter = Counter()
    labelled = 0
    _, items = _records(traces, limit, IMAGE_CHECK)
    with TraceWriter(work, prefix=SHARD_PREFIX, fsync=False) as writer:
        for rec in items:
            if isinstance(rec, Reject) or rec.id not in accepted:
                continue
            src_rel, src_abs = _rebase(rec, traces, rec.source_image)
            placed[_place_image(src_abs, work / src_rel)] += 1
            rec.source_image = src_rel
            for a in rec.attempts:
                if a.image is not None:
                    rel, absolute = _rebase(rec, traces, a.image)
                    placed[_place_image(absolute, work / rel)] += 1
                    a.image = rel
                if a.judge is None:
                    o = journal.done.get(AttemptRef(rec.id, a.candidate, a.round, a.reasoning_tokens))
                    if isinstance(o, JudgeResult):
                        a.judge = o.label
                        labelled += 1
            rec.root = work
            writer.write(rec)
        shards = list(writer.shards_written)
    for shard in shards:  # written without per-record fsync: make them durable before the rename
        with open(shard, "rb") as fh:
            os.fsync(fh.fileno())
    return placed, labelled


# long function: the two passes (accept, judge) and the journal, which share their state
def judge_traces(
    traces: str | os.PathLike,
    out: str | os.PathLike,
    judge: Judge,
    *,
    limit: int | None = None,
    workers: int = 1,
    batch_size: int = 8,
    retry_failed: bool = False,
    restart: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    judge_tasks: Callable[..., tuple[Counter, float]] | None = None,
) -> dict[str, Any]:
    """Judge every attempt of ``traces`` that lacks a judge; write the dataset to ``out``; the summary.

    ``judge_tasks`` replaces the thread pool that judges the pending attempts (same arguments as
    ``_judge_tasks``): ``ade-judge --ray`` passes one that judges them on Ray workers (ray_judge.py)."""
    traces_p, out_p = Path(traces).resolve(), Path(out).resolve()
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if workers < 1 or batch_size < 1:
        raise InputError("--workers and --batch-size must be >= 1")
    if out_p == traces_p or traces_p in out_p.parents or out_p in traces_p.parents:
        raise InputError(f"--out {out_p} must be outside --traces {traces_p} (and not contain it)")
    key = str(traces_p) + ("" if limit is None else f"?limit={limit}")
    if out_p.exists():
        done = _finished(out_p, key, judge.name)
        if done is None:
            raise InputError(
                f"--out {out_p} exists and is not a finished run of {judge.name} over {traces_p}; "
                "choose a new --out or remove it"
            )
        log(f"{out_p} is already complete; nothing to do")
        return done
    if workers > 1 and not getattr(judge, "thread_safe", True):
        log(
            f"judge {judge.name} is not thread-safe: using 1 worker instead of {workers} (batching still applies)"
        )
        workers = 1
    work = out_p.with_name(out_p.name + ".partial")
    if restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    journal = Journal(work, key, judge.name)
    t_start = time.monotonic()
    try:
        resumed = len(journal.done)
        tasks, refs, counts, rejects = _plan(traces_p, limit, judge, journal, retry_failed)
        if rejects:
            log(
                f"{len(rejects)} rejected records (not judged, not copied): {dict(Counter(r.reason for r in rejects))}"
            )
            for line in reject_lines(rejects, "skipped")[1:]:
                log(line)
        log(
            f"{counts['records']} records, {counts['attempts']} attempts: {len(tasks)} to judge, "
            f"{counts['kept']} already labelled, {counts['from_journal']} in the journal, "
            f"{counts['no_image']} without image"
        )
        show = os.isatty(2) if progress is None else progress
        now, judge_wall = (judge_tasks or _judge_tasks)(judge, tasks, journal, workers, batch_size, show)
        problems = []
        if isinstance(judge, HumanJudge):
            unmatched = judge.unmatched(refs)
            problems = unmatched + judge.problems
            for p in problems[:20]:
                log(f"label problem: {p}")
        accepted = {ref.record_id for ref in refs}
        placed, labelled_now = _write_dataset(traces_p, limit, work, journal, accepted)
        done_now = now["judged"] + now["failed"]
        summary = {
            "traces": key,
            "judge": judge.name,
            "journal": JOURNAL_NAME,
            "records": counts["records"],
            "rejects": len(rejects),
            "rejects_by_reason": dict(Counter(r.reason for r in rejects)),
            "attempts": counts["attempts"],
            "kept_existing": counts["kept"],
            "labelled_by_this_judge": labelled_now,
            "no_image": counts["no_image"],
            "unlabelled": counts["attempts"] - counts["kept"] - labelled_now,
            "resumed_from_journal": resumed,
            "this_run": {
                "judged": now["judged"],
                "failed": now["failed"],
                "wall_seconds": round(time.monotonic() - t_start, 3),
                "attempts_per_second": round(done_now / judge_wall, 3)
                if judge_wall > 0 and done_now
                else None,
            },
            "cost": journal.totals().to_json(),
            "images": dict(placed),
            "unmatched_labels": len(unmatched) if isinstance(judge, HumanJudge) else 0,
            "invalid_labels": len(judge.problems) if isinstance(judge, HumanJudge) else 0,
            "label_problems": [str(p) for p in problems[:MAX_LISTED]],
            "reject_list": [r.to_json() for r in rejects[:MAX_LISTED]],
        }
        tmp = work / (SUMMARY_NAME + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, work / SUMMARY_NAME)
    finally:
        journal.close()
    os.rename(work, out_p)  # OUT appears complete, in one step
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable cost summary printed at the end of a run."""
    c, t = summary["cost"], summary["this_run"]
    tokens = "unknown" if c["tokens_in"] is None else f"{c['tokens_in']} in / {c['tokens_out']} out"
    return "\n".join(
        [
            f"judge {summary['judge']}: {summary['records']} records, {summary['attempts']} attempts, "
            f"{summary['rejects']} rejects",
            f"  labelled by this judge {summary['labelled_by_this_judge']}, kept {summary['kept_existing']}, "
            f"without image {summary['no_image']}, still unlabelled {summary['unlabelled']}",
            f"  this run: {t['judged']} judged, {t['failed']} failed, {t['wall_seconds']} s, "
            f"{t['attempts_per_second']} attempts/s",
            f"  cost (all runs): {c['judge_calls']} judge calls, {c['judge_seconds']} judge-seconds, tokens {tokens}, "
            f"{c['malformed']} malformed, failures {c['failures']}",
            f"  images {summary['images']}; unmatched labels {summary['unmatched_labels']}, "
            f"invalid labels {summary['invalid_labels']}",
        ]
    )
