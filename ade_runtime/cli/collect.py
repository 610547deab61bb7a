"""``ade-collect``: run the full attempt grid over a file of requests to produce training traces.

Every request is run over candidates x rounds x reasoning budgets; round r > 0 refines
round r-1 of the same candidate with the critique's feedback (and region) when an export
with a critique head is given, else it is a blind retry on the previous output. Seeds
match the live loop's, so collected attempts are the ones ADE would have sampled. The
output is a v1 trace dataset with ``judge`` empty (label it with ``ade-judge``).
``--shard k/n`` takes every n-th request starting at k, so a scheduler can fan a request
file out over many GPUs into one directory; a rerun skips requests already written.

Request file: JSON lines ``{"id": str, "image": path relative to the file,
"instruction": str, "category": str (optional)}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ade_runtime.backbones.base import AttemptSpec, EditRequest
from ade_runtime.cli._common import add_backbone_args, backbone_meta, build_backbone, build_scorer
from ade_runtime.errors import ADEError, InputError
from ade_runtime.loop import AttemptLog, attempt_seed, validate_request
from ade_runtime.policy.session import Step
from ade_runtime.progress import progress
from ade_runtime.trace_log import build_record
from ade_runtime.traces import TraceWriter, load_records


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
) -> list[AttemptLog]:
    """Every attempt of the grid for one request, in trace order."""
    state = backbone.prepare(request)
    logs: list[AttemptLog] = []
    for t in levels:
        for c in range(candidates):
            prev: AttemptLog | None = None
            for r in range(rounds):
                prompt, input_image, mask = request.instruction, None, None
                if prev is not None:
                    if prev.output is None or prev.output.image is None:
                        break  # the chain broke (backbone error): nothing to refine
                    input_image = prev.output.image
                    prompt = prev.feedback or request.instruction
                    mask = prev.mask if backbone.supports_mask else None
                step = Step(c, r, t, (c, r - 1, t) if r else None)
                entry = AttemptLog(step=step, prompt=prompt, output=None)
                spec = AttemptSpec(
                    c, r, t, prompt, attempt_seed(seed, c, r), input_image=input_image, mask=mask
                )
                try:
                    entry.output = backbone.run(state, spec)
                except Exception as exc:  # recorded; the grid goes on
                    entry.error = f"{type(exc).__name__}: {exc}"
                    print(f"ade-collect: {request.id} {step.key}: {entry.error}", file=sys.stderr)
                    logs.append(entry)
                    break
                img = entry.output.image
                if img is not None:
                    if scorer is not None:
                        entry.scores = {
                            k: float(v) for k, v in scorer(request.image, img, request.instruction).items()
                        }
                    if critique is not None:
                        crit = critique.predict(
                            request.image,
                            img,
                            request.instruction,
                            attention_mask=entry.output.attention_mask,
                        )
                        entry.critique_p, entry.feedback, entry.mask = (
                            float(crit.p_pass),
                            crit.feedback,
                            crit.mask,
                        )
                logs.append(entry)
                prev = entry
    return logs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ade-collect", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    p.add_argument("--requests", required=True, help="JSON-lines file of requests (see --help text)")
    p.add_argument("--out", required=True, help="output trace dataset directory")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reasoning", default="0", help="comma-separated reasoning-token budgets, e.g. 0,512")
    p.add_argument(
        "--predictors", default=None, help="export directory whose critique writes the refinement prompts"
    )
    p.add_argument("--shard", default="0/1", help="k/n: take requests k, k+n, k+2n, ...")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        k, n = parse_shard(args.shard)
        levels = sorted({int(x) for x in args.reasoning.split(",") if x.strip()})
        if args.candidates < 1 or args.rounds < 1 or not levels or min(levels) < 0:
            raise InputError("--candidates and --rounds must be >= 1 and --reasoning non-negative integers")
        reqs, bad = read_requests(Path(args.requests))
        for msg in bad:
            print(f"ade-collect: rejected {msg}", file=sys.stderr)
        mine = [r for i, r in enumerate(reqs) if i % n == k]
        out = Path(args.out)
        done: set[str] = set()
        if out.is_dir() and any(out.rglob("*.jsonl")):
            done = {r.id for r in load_records(out, images="none")[0]}
        todo = [r for r in mine if r.id not in done]
        print(
            f"ade-collect: shard {k}/{n}: {len(mine)} requests, {len(mine) - len(todo)} already collected",
            file=sys.stderr,
        )
        critique = None
        if args.predictors:
            from ade_runtime.predictors.bundle import Predictors

            critique = Predictors.load(args.predictors).critique
        backbone = build_backbone(args, "ade-collect")
        scorer = build_scorer(args, args.backbone)
        written = failed = 0
        with TraceWriter(out, prefix=f"collect-s{k}of{n}") as writer:
            for line in progress(todo, desc="ade-collect"):
                try:
                    with Image.open(line.image) as im:
                        image = im.copy()
                    request = validate_request(
                        EditRequest(
                            image, line.instruction, line.id, line.category, meta=backbone_meta(backbone)
                        )
                    )
                except (OSError, InputError) as exc:
                    print(f"ade-collect: rejected {line.id}: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                logs = run_grid(
                    backbone,
                    request,
                    candidates=args.candidates,
                    rounds=args.rounds,
                    levels=levels,
                    seed=args.seed,
                    critique=critique,
                    scorer=scorer,
                )
                errors = [{"key": list(e.step.key), "error": e.error} for e in logs if e.error]
                record = build_record(
                    request,
                    logs,
                    backbone.name,
                    ade_meta={"collect": True, "failures": errors},
                    writer=writer,
                )
                if record.attempts:
                    writer.write(record)
                    written += 1
                else:
                    failed += 1
    except ADEError as exc:
        print(f"ade-collect: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "shard": f"{k}/{n}",
                "written": written,
                "skipped": len(mine) - len(todo),
                "failed": failed,
                "rejected_lines": len(bad),
            }
        )
    )
    return 0 if failed == 0 and not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
