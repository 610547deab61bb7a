"""``ade-collect``: run the full attempt grid over a file of requests to produce training traces.

Every request is run over candidates x rounds x reasoning budgets; round r > 0 refines
round r-1 of the same candidate with the critique's feedback (and region) when an export
with a critique head is given, else it is a blind retry on the previous output. Seeds
match the live loop's, so collected attempts are the ones ADE would have sampled. The
output is a v1 trace dataset with ``judge`` empty (label it with ``ade-judge``).
``--ray`` runs the same grid on a Ray cluster, one worker per GPU, into the same kind of dataset
(docs/scaling.md). ``--shard k/n`` is the hand-made alternative: it takes every n-th request starting
at k, so a scheduler can fan a request file out over many GPUs into one directory. Either way a
rerun skips requests already written.

Two runs of the same shard into one ``--out`` are refused (a lock per shard), so ids are never
written twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ade_runtime.attempts import AttemptLog, LiveSource
from ade_runtime.backbones.base import EditRequest
from ade_runtime.cli._common import add_backbone_args, build_backbone, build_scorer, pipeline_kwargs
from ade_runtime.cli._io import (
    add_predictor_args,
    check_backbone_name,
    cli_main,
    load_predictors,
    prepare_out_dir,
)
from ade_runtime.cli._verifier import add_verifier_args, build_verifier, check_verifier_args
from ade_runtime.errors import InputError
from ade_runtime.policy.driver import GridSession, drive
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress
from ade_runtime.requests import validate_request
from ade_runtime.scale.options import RayOptions, add_ray_args
from ade_runtime.stack import backbone_meta
from ade_runtime.traces import EditRecord, RecordRefused, TraceWriter, load_records
from ade_runtime.traces.reader import reject_lines
from ade_runtime.traces.serving import staged_record

REQUESTS_FORMAT = """\
requests file (--requests): JSON lines, one request per line:
  {"id": "q0", "image": "src/q0.png", "instruction": "Turn the red circle blue", "category": "recolor"}
  id           unique non-empty string (the trace record's id)
  image        path of the source image, relative to the requests file (PNG/JPEG/WebP)
  instruction  the edit instruction, non-empty
  category     optional label kept in the trace
Bad lines are reported (file:line and the field) and skipped. Build one with
`ade-testbed request --append FILE` or any script that writes these lines."""


@dataclass
class RequestLine:
    id: str
    image: Path
    instruction: str
    category: str | None


def read_requests(path: Path) -> tuple[list[RequestLine], list[str]]:
    """Parse the request file; bad lines are returned as messages naming the line and the field."""
    good, bad = [], []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(f"{path}:{n}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                bad.append(f"{path}:{n}: expected an object")
                continue
            problems = [
                f
                for f in ("id", "image", "instruction")
                if not isinstance(obj.get(f), str) or not obj[f].strip()
            ]
            if problems:
                bad.append(f"{path}:{n}: field {problems[0]!r} must be a non-empty string")
                continue
            if obj["id"] in seen:
                bad.append(f"{path}:{n}: duplicate id {obj['id']!r}")
                continue
            seen.add(obj["id"])
            cat = obj.get("category")
            good.append(
                RequestLine(
                    obj["id"],
                    path.parent / obj["image"],
                    obj["instruction"],
                    cat if isinstance(cat, str) else None,
                )
            )
    return good, bad


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: write it as k/n, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard {text!r}: need 0 <= k < n")
    return k, n


def run_grid(
    backbone,
    request: EditRequest,
    *,
    candidates: int,
    rounds: int,
    levels: list[int],
    seed: int,
    critique=None,
    scorer=None,
    verifier=None,
) -> list[AttemptLog]:
    """Every attempt of the grid for one request, in trace order: the live loop's driver and attempt
    source, visited by a ``GridSession``. ``verifier`` (an expensive verifier) scores every attempt,
    so that replay can run the cascade at any band and charge each call."""
    failures: list[dict] = []
    source = LiveSource(
        backbone,
        request,
        Predictors(critique=critique),
        failures,
        scorer=scorer,
        verifier=verifier,
        seed=seed,
        use_mask=True,
    )
    drive(GridSession(candidates, rounds, levels), source)
    for f in failures:
        if f["stage"] != "backbone":  # training data never holds an attempt with scores missing
            raise RuntimeError(f"{request.id} {tuple(f['key'])}: the {f['stage']} failed: {f['error']}")
    for e in source.order:
        if e.error:  # recorded in the trace (meta.ade.failures); the grid went on
            print(f"ade-collect: {request.id} {e.step.key}: {e.error}", file=sys.stderr)
    for entry in source.order:
        entry.confidence = entry.first_stage = None  # no calibration in collection: nothing to record
    return source.order


class ShardLock:
    """An exclusive ``flock`` on OUT/.collect-sKofN.lock: a second writer of the same shard is refused.

    The kernel drops the lock when the process dies, so a killed run never blocks the rerun.
    """

    def __init__(self, out: Path, k: int, n: int) -> None:
        self.path = out / f".collect-s{k}of{n}.lock"
        self.fh = None

    def __enter__(self) -> ShardLock:
        import fcntl

        self.fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            self.fh.close()
            raise InputError(
                f"--out {self.path.parent}: another ade-collect (pid {pid}) is writing shard "
                f"{self.path.stem.removeprefix('.collect-s').replace('of', '/')} there; wait for it to finish "
                "or choose another --out"
            ) from None
        self.fh.truncate(0)
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock


@cli_main("ade-collect")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ade-collect",
        description=__doc__.split("\n\n")[0],
        epilog=REQUESTS_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_backbone_args(p)
    p.add_argument("--requests", required=True, help="JSON-lines file of requests (format below)")
    p.add_argument("--out", required=True, help="output trace dataset directory (created)")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reasoning", default="0", help="comma-separated reasoning-token budgets, e.g. 0,512")
    add_predictor_args(
        p, required=False, help="export directory whose critique writes the refinement prompts (OUT/export)"
    )
    add_verifier_args(p)
    p.add_argument(
        "--shard",
        default="0/1",
        help="k/n: take requests k, k+n, k+2n, ... (a hand-made split; --ray splits itself)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_ray_args(p)
    args = p.parse_args(argv)
    check_backbone_name(args.backbone)
    pipeline_kwargs(args)  # a JSON typo is refused before anything loads
    check_verifier_args(args)
    k, n = parse_shard(args.shard)
    ray_opts = RayOptions.from_args(args) if args.ray else None
    if ray_opts is not None and n != 1:
        raise InputError(
            f"--shard {args.shard} and --ray do not combine: Ray splits the requests over its workers"
        )
    try:
        levels = sorted({int(x) for x in args.reasoning.split(",") if x.strip()})
    except ValueError:
        levels = []
    if args.candidates < 1 or args.rounds < 1 or not levels or min(levels) < 0:
        raise InputError("--candidates and --rounds must be >= 1 and --reasoning non-negative integers")
    requests_path = Path(args.requests)
    if not requests_path.is_file():
        raise InputError(
            f"--requests {requests_path}: no such file; write one request per line ({REQUESTS_HINT})"
        )
    reqs, bad = read_requests(requests_path)
    for msg in bad:
        print(f"ade-collect: rejected {msg}", file=sys.stderr)
    out = prepare_out_dir(args.out)
    with ShardLock(out, k, n):  # a --ray job holds shard 0/1: it writes every request
        if ray_opts is not None:
            from ade_runtime.scale.ray_collect import collect_on_ray

            return collect_on_ray(args, ray_opts, reqs, bad, out, levels)
        return _collect(args, reqs, bad, out, k, n, levels)


REQUESTS_HINT = '{"id": ..., "image": ..., "instruction": ...}, see ade-collect --help'


def load_request(line: RequestLine) -> EditRequest:
    """The request a line names, image loaded and checked (OSError / InputError when unusable)."""
    with Image.open(line.image) as im:
        image = im.copy()
    return validate_request(EditRequest(image, line.instruction, line.id, line.category))


class Collector:
    """What one process holds to collect traces: the backbone (with its caches), the critique, the
    scorer and the verifier, loaded once; ``record`` runs one request's grid and writes its record.
    ``ade-collect`` uses one; ``ade-collect --ray`` one per Ray worker (ade_runtime/scale)."""

    def __init__(self, args: argparse.Namespace, levels: list[int], prog: str = "ade-collect") -> None:
        self.args, self.levels = args, levels
        self.critique = load_predictors(args, prog).critique if args.predictors else None
        self.backbone = build_backbone(args, prog)
        self.scorer = build_scorer(args, args.backbone)
        self.verifier = build_verifier(args)

    def record(self, request: EditRequest) -> tuple[EditRecord, dict[str, Any]]:
        """The request's record and the images it names, for ``TraceWriter.write(record, images=...)``
        (nothing is written here). InputError when the backbone refuses the request."""
        args, backbone, verifier = self.args, self.backbone, self.verifier
        request.meta.update(backbone_meta(backbone))  # the GPU options, recorded in the trace
        logs = run_grid(
            backbone,
            request,
            candidates=args.candidates,
            rounds=args.rounds,
            levels=self.levels,
            seed=args.seed,
            critique=self.critique,
            scorer=self.scorer,
            verifier=verifier,
        )
        errors = [{"key": list(e.step.key), "error": e.error} for e in logs if e.error]
        if verifier is not None:  # what replay charges per call (verifier_seconds)
            calls = [c for e in logs for c in e.verifier_calls]
            request.meta["reward_model"] = {
                "name": verifier.name,
                "seconds_per_call": (sum(c["seconds"] for c in calls) / len(calls)) if calls else 0.0,
                "calls": len(calls),
                "cost_source": getattr(verifier.cost, "source", ""),
            }
        return staged_record(request, logs, backbone.name, ade_meta={"collect": True, "failures": errors})


def collected_ids(out: Path, prog: str = "ade-collect") -> set[str]:
    """Ids of the valid records already in ``out`` (a record whose image went bad still counts)."""
    if not any(out.rglob("*.jsonl")):
        return set()
    records, rejects = load_records(out, images="none")
    for line in reject_lines(rejects, "in --out ignored"):
        print(f"{prog}: {line}", file=sys.stderr)
    return {r.id for r in records}


def _collect(args, reqs, bad, out: Path, k: int, n: int, levels: list[int]) -> int:
    mine = [r for i, r in enumerate(reqs) if i % n == k]
    # validate every request of this shard before the backbone loads
    todo_checked: list[tuple[RequestLine, EditRequest]] = []
    failed = 0
    done = collected_ids(out)
    for line in mine:
        if line.id in done:
            continue
        try:
            request = load_request(line)
        except (OSError, InputError) as exc:
            print(f"ade-collect: rejected {line.id}: {exc}", file=sys.stderr)
            failed += 1
            continue
        todo_checked.append((line, request))
    print(
        f"ade-collect: shard {k}/{n}: {len(mine)} requests, {len(done & {r.id for r in mine})} already collected",
        file=sys.stderr,
    )
    collector = Collector(args, levels)
    written = 0
    with TraceWriter(out, prefix=f"collect-s{k}of{n}") as writer:
        for _, request in progress(todo_checked, desc="ade-collect"):
            try:
                record, images = collector.record(request)
            except InputError as exc:  # the backbone refuses this request (e.g. prepare): skip it
                print(f"ade-collect: rejected {request.id}: {exc}", file=sys.stderr)
                failed += 1
                continue
            if not record.attempts:
                failed += 1
                continue
            try:  # the record and its images, all or nothing
                writer.write(record, images=images)
            except RecordRefused as exc:
                print(f"ade-collect: rejected {request.id}: {exc}", file=sys.stderr)
                failed += 1
                continue
            written += 1
    print(
        json.dumps(
            {
                "shard": f"{k}/{n}",
                "written": written,
                "skipped": len(done & {r.id for r in mine}),
                "failed": failed,
                "rejected_lines": len(bad),
            }
        )
    )
    return 0 if failed == 0 and not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
