"""``ade-judge --ray``: the attempts to judge on a Ray cluster, one judge per worker (and GPU).

The run is ``judge_traces`` unchanged (run.py: plan, journal, finalisation into ``OUT``); only the
judging of the pending attempts moves: batches of attempts go through Ray Data (``from_items`` +
``map_batches`` with an actor class); each actor (``JudgeWorker``) builds the judge once from its
spec, on its GPU, and returns the outcomes. The driver alone journals them, as in a local run, so
the journal stays the exactly-once record: a batch a dead worker had not finished is judged again
on a restarted actor (Ray Data's retry), an outcome that reaches the driver twice is journaled
once, and a rerun judges only what the journal lacks. The dataset written at the end is therefore
the one a single-process run writes.

The driver never loads the judge: ``RemoteJudge`` carries its name (checked against the workers').
Human labels are a file lookup, not compute: ``--judge human:...`` is refused with ``--ray``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.errors import ADEError, InputError
from ade_runtime.scale.options import FAULT_ENV, Progress, RayOptions, require_ray, start_ray

from .base import AttemptRef, JudgeFailure, JudgeResult
from .journal import Journal, outcome_from_json, outcome_to_json
from .run import Tally, _run_batch, _Task
from .spec import SPEC_FORMS

PROG = "ade-judge --ray"
MAX_BLOCKS = 2000


def remote_judge_name(spec: str) -> str:
    """The name ``build_judge(spec)`` gives its judge, without loading it; InputError for a bad spec."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "testbed" and not arg:
        return "testbed"
    if kind in ("vlm", "openai") and arg:
        return f"{kind}:{arg}"
    if kind == "human" and arg:
        raise InputError(
            "--judge human:... reads labels from a file: there is nothing to spread over a cluster; "
            "run ade-judge without --ray"
        )
    raise InputError(f"--judge {spec!r} is not a judge spec; use one of: {', '.join(SPEC_FORMS)}")


class RemoteJudge:
    """What the driver knows of a judge that is built only in the Ray workers."""

    needs_images = True  # every judge Ray runs (testbed, vlm, openai) looks at pixels
    thread_safe = True  # one judge per worker: the driver's thread count does not apply

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        self.spec, self.options = spec, options
        self.name = remote_judge_name(spec)


class JudgeWorker:
    """A Ray Data actor: one judge, built once; a row is one batch of attempts (JSON), the output one
    JSON list of outcomes."""

    def __init__(
        self,
        spec: str,
        options: dict[str, Any],
        name: str,
        entries: str,
        max_retries: int,
        fault: tuple[str, Path] | None = None,
    ) -> None:
        from .spec import build_judge

        self.judge = build_judge(spec, **options)
        self.entries, self.max_retries = Path(entries), max_retries
        self.fault = fault
        if self.judge.name != name:
            raise InputError(
                f"judge {spec!r} is named {self.judge.name!r} in the worker, {name!r} in the driver"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for index, text in zip(batch["index"], batch["tasks"], strict=True):
            tasks = [_task_from_json(t) for t in json.loads(text)]
            deaths = _enter(self.entries, int(index))
            if deaths > self.max_retries:  # this batch killed its workers: give it up in this run
                why = f"{deaths} Ray workers died judging this batch (--ray-max-retries); rerun to retry"
                outcomes: list = [JudgeFailure(t.ref, "judge_error", why) for t in tasks]
            else:
                if self.fault is not None and any(t.ref.record_id == self.fault[0] for t in tasks):
                    _die_once(*self.fault)
                outcomes = _run_batch(self.judge, tasks)
            out.append(json.dumps([outcome_to_json(o) for o in outcomes]))
        return {"outcomes": np.array(out, dtype=object)}


def _enter(entries: Path, index: int) -> int:
    """Record that a worker starts batch ``index``; how many started it before (and died: a batch is
    started again only when its worker died). One ``O_EXCL`` file per start, so racing starts count."""
    from ade_runtime.scale.claims import create_exclusive

    n = 0
    while not create_exclusive(entries / f"{index}.{n}", ""):
        n += 1
    return n


def fault_from_env() -> str | None:
    """Test-only: ``ADE_RAY_FAULT=<record id>`` kills the worker that gets the first batch with an attempt
    of that record, once per run (before judging it). Never set it in production."""
    import os

    return os.environ.get(FAULT_ENV) or None


def _die_once(record_id: str, marker_dir: Path) -> None:
    import os

    from ade_runtime.scale.claims import claim_key, create_exclusive

    if create_exclusive(marker_dir / f".ray-fault-{claim_key(record_id)}", record_id):
        print(f"{PROG}: {FAULT_ENV}: a worker dies on {record_id}", file=sys.stderr, flush=True)
        os._exit(1)


def _task_to_json(t: _Task) -> dict[str, Any]:
    return {
        "ref": t.ref.to_json(),
        "instruction": t.instruction,
        "category": t.category,
        "source": str(t.source),
        "output": None if t.output is None else str(t.output),
    }


def _task_from_json(obj: dict[str, Any]) -> _Task:
    out = obj["output"]
    return _Task(
        AttemptRef.from_json(obj["ref"]),
        obj["instruction"],
        obj["category"],
        Path(obj["source"]),
        None if out is None else Path(out),
    )


class RayJudgeTasks:
    """``judge_traces(..., judge_tasks=RayJudgeTasks(opts))``: judge the pending attempts on Ray."""

    def __init__(self, opts: RayOptions) -> None:
        self.opts = opts

    def __call__(
        self,
        judge: RemoteJudge,
        tasks: list[_Task],
        journal: Journal,
        workers: int,
        batch_size: int,
        show: bool,
    ) -> tuple[Counter, float]:
        ray = require_ray("ade-judge")
        if not tasks:
            return Counter(), 0.0
        started = start_ray(ray, self.opts, "ade-judge")
        try:
            return self._run(ray, judge, tasks, journal, batch_size)
        finally:
            if started:
                ray.shutdown()

    def _run(
        self, ray: Any, judge: RemoteJudge, tasks: list[_Task], journal: Journal, batch_size: int
    ) -> tuple[Counter, float]:
        n_workers, gpus = self.opts.resolve(ray)
        batches = [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]
        print(
            f"{PROG}: {len(tasks)} attempts in {len(batches)} batches on {n_workers} worker(s), "
            f"{gpus:g} GPU(s) each",
            file=sys.stderr,
        )
        items = [
            {"index": i, "tasks": json.dumps([_task_to_json(t) for t in b])} for i, b in enumerate(batches)
        ]
        entries = Path(tempfile.mkdtemp(prefix=".ray-batches-", dir=journal.path.parent))
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        ds = ds.map_batches(
            JudgeWorker,
            fn_constructor_kwargs={
                "spec": judge.spec,
                "options": judge.options,
                "name": judge.name,
                "entries": str(entries),
                "max_retries": self.opts.max_retries,
                "fault": (rid, journal.path.parent) if (rid := fault_from_env()) else None,
            },
            batch_size=1,
            batch_format="numpy",
            **self.opts.actor_args(ray, n_workers, gpus),
        )
        tally, bar = Tally(judge.name), Progress(PROG, len(tasks), unit="attempts")
        recorded: set[AttemptRef] = set()
        t0 = time.monotonic()
        try:
            for row in ds.iter_rows():
                outcomes: list[JudgeResult | JudgeFailure] = [
                    o for o in map(outcome_from_json, json.loads(row["outcomes"])) if o.ref not in recorded
                ]
                if outcomes:  # a batch that reached the driver twice (a retry) is journaled once
                    tally.add(outcomes, journal)
                    recorded.update(o.ref for o in outcomes)
                    bar.update(len(outcomes))
        except ray.exceptions.RayError as exc:
            from ade_runtime.scale.ray_collect import ray_error_line

            raise ADEError(
                f"the Ray job stopped ({ray_error_line(exc)}); every judged attempt is in the journal: "
                "run the same command again to resume"
            ) from None
        finally:
            shutil.rmtree(entries, ignore_errors=True)
        return tally.now, time.monotonic() - t0
