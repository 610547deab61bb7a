"""``ade-replay``: compare policies offline, exactly, over a judged trace dataset.

The attempts already exist, so every policy is replayed without a GPU: Best-of-N, a
fixed refinement chain, confidence-based stopping without CARD (ADE-CoT-like), CARD
budgets without stopping (PhysEdit-like), ADE, and two upper bounds selected by the judge.
Compute figures include what ADE's own checks cost (``ade_runtime.overhead``).

    ade-replay --traces data/shifted --predictors checkpoints/card [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ade_runtime.cli._io import add_predictor_args, cli_main, load_predictors
from ade_runtime.errors import InputError
from ade_runtime.offline.curves import format_curves
from ade_runtime.offline.evaluate import NO_CONFIDENCE, evaluate, format_table
from ade_runtime.policy import POLICY_NAMES
from ade_runtime.traces import load_records
from ade_runtime.traces.reader import reject_lines


@cli_main("ade-replay")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ade-replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", required=True, help="a judged trace dataset (format v1)")
    add_predictor_args(
        p, required=True, help="an export directory (make train writes OUT/export; OUT works too)"
    )
    p.add_argument(
        "--policies",
        default=",".join(POLICY_NAMES),
        help=f"comma-separated (default: {','.join(POLICY_NAMES)})",
    )
    p.add_argument("--limit", type=int, default=None, help="replay the first N valid requests only")
    p.add_argument("--no-critique", action="store_true", help="do not run the critique head on stored images")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="a per-request deadline in modelled seconds, the rule ade-serve and AdaptiveEditor apply (needs latency_s)",
    )
    p.add_argument(
        "--ci",
        nargs="?",
        type=float,
        const=0.9,
        default=None,
        help="paired bootstrap intervals vs Best-of-8 at this level (default 0.9) and the compute-quality "
        "curves: Best-of-N per selector and reasoning level, confidence_stop / card_only sweeps",
    )
    args = p.parse_args(argv)
    predictors = load_predictors(args, "ade-replay")
    # the same image check as ade-traces validate: a record with a corrupt image is skipped and reported
    records, rejects = load_records(Path(args.traces), images="header")
    for line in reject_lines(rejects):
        print(f"ade-replay: {line}", file=sys.stderr)
    if args.limit:
        records = records[: args.limit]
    if not records:
        raise InputError(f"{args.traces}: no valid records; check it with `ade-traces validate`")
    if not any(a.judge is not None for r in records for a in r.attempts):
        raise InputError(f"{args.traces}: no judge labels; label the traces first (ade-judge)")
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if args.ci is not None and not 0.0 < args.ci < 1.0:
        raise InputError(f"--ci {args.ci}: give a level in (0, 1), e.g. --ci 0.9")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise InputError(f"--max-seconds {args.max_seconds}: give a positive number of seconds")
    result = evaluate(
        records,
        predictors,
        policies,
        use_critique=not args.no_critique,
        ci=args.ci,
        max_seconds=args.max_seconds,
    )
    for rid, why in result.get("skipped", {}).items():
        print(f"ade-replay: record {rid} skipped: {why}", file=sys.stderr)
    result["rejected"] = len(rejects) + len(result.get("skipped", {}))
    if result["no_confidence"]:
        print(f"ade-replay: {NO_CONFIDENCE}", file=sys.stderr)
    print(format_table(result))
    if "curves" in result:
        print()
        print(format_curves(result["curves"]))
    if args.json:
        print(json.dumps(result, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
