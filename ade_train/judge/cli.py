"""``ade-judge``: label logged traces with a judge, and measure agreement between labelings.

    ade-judge --traces IN --out OUT --judge SPEC [--limit N] [--workers N] [--batch-size N] ...
    ade-judge agree A B [--json]

SPEC: ``testbed``, ``vlm:<hf id or local path>``, ``openai:<model>``, ``human:<file.csv|file.jsonl>``.
See docs/judge.md. Exit status 0 on success, 2 on a usage or input error (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys

from ade_runtime.errors import ADEError
from ade_runtime.scale.options import add_ray_args

from .spec import SPEC_FORMS


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-judge",
        description="Fill the missing judge labels of a v1 trace dataset and write a new dataset. "
        "Also: 'ade-judge agree A B' compares two labelings.",
    )
    p.add_argument("--traces", required=True, help="input v1 trace dataset directory (never modified)")
    p.add_argument(
        "--out", required=True, help="output dataset directory (built in OUT.partial, renamed when done)"
    )
    p.add_argument("--judge", required=True, help="judge spec: " + " | ".join(SPEC_FORMS))
    p.add_argument("--limit", type=int, default=None, help="only the first N valid records (a trial run)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads calling the judge (API judges: >1 helps; default 1); with --ray: Ray workers, one judge each",
    )
    p.add_argument("--batch-size", type=int, default=4, help="attempts per judge call")
    p.add_argument(
        "--pass-threshold",
        type=float,
        default=0.7,
        help="pass when VIEScore O/10 >= this (vlm, openai, human score-only rows)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="on resume, judge again the attempts whose judging failed"
    )
    p.add_argument(
        "--restart", action="store_true", help="discard an unfinished OUT.partial instead of resuming it"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    g = p.add_argument_group("vlm judge")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument(
        "--box-format",
        choices=["auto", "pixels", "norm1000", "unit"],
        default=None,
        help="how the judge gives boxes (default: auto for vlm, unit for openai)",
    )
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    g = p.add_argument_group("openai judge (defaults from OPENAI_BASE_URL / OPENAI_API_KEY)")
    g.add_argument("--base-url", default=None)
    g.add_argument("--api-key", default=None)
    g.add_argument("--rps", type=float, default=2.0, help="requests per second (0 = unlimited)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=4, help="retries of one API request")
    add_ray_args(p, workers=False, retries=False)
    return p


def _agree_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-judge agree", description="Agreement between two labelings of the same traces."
    )
    p.add_argument("a", help="first labelled dataset")
    p.add_argument("b", help="second labelled dataset")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON on the last line")
    return p


def _agree(argv: list[str]) -> int:
    from .agree import agreement, format_agreement

    args = _agree_parser().parse_args(argv)
    result = agreement(args.a, args.b)
    print(format_agreement(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def _run(argv: list[str]) -> int:
    from .run import format_summary, judge_traces
    from .spec import build_judge

    args = _run_parser().parse_args(argv)
    options = dict(
        pass_threshold=args.pass_threshold,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        box_format=args.box_format,
        device=args.device,
        dtype=args.dtype,
        base_url=args.base_url,
        api_key=args.api_key,
        rps=args.rps,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
    )
    judge_tasks = None
    if args.ray:  # the judge is built in the Ray workers only
        from ade_runtime.scale.options import RayOptions

        from .ray_judge import RayJudgeTasks, RemoteJudge

        judge = RemoteJudge(args.judge, options)
        judge_tasks = RayJudgeTasks(RayOptions.from_args(args, retries=False))
    else:
        judge = build_judge(args.judge, **options)
    summary = judge_traces(
        args.traces,
        args.out,
        judge,
        limit=args.limit,
        workers=args.workers or 1,
        judge_tasks=judge_tasks,
        batch_size=args.batch_size,
        retry_failed=args.retry_failed,
        restart=args.restart,
        progress=False if args.no_progress else None,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(format_summary(summary))
    if args.json:
        print(
            json.dumps(
                {k: v for k, v in summary.items() if k not in ("reject_list", "label_problems")},
                sort_keys=True,
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "agree":
            return _agree(argv[1:])
        return _run(argv)
    except ADEError as exc:
        print(f"ade-judge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the journal holds every finished label: a rerun resumes
        print("ade-judge: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
