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

from ade_runtime.errors import ADEError
from ade_runtime.overhead import overhead_for
from ade_runtime.policy import POLICY_NAMES, PolicyConfig, ReplayError, replay_policy, summarize
from ade_runtime.policy.signals import card_budget, critique_probabilities, record_signals
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress
from ade_runtime.traces import load_records

REFERENCE = "best_of_8"


def evaluate(
    records, predictors: Predictors, policies, *, use_critique: bool = True, desc: str = "replay"
) -> dict:
    """Replay ``policies`` over ``records``; returns ``{"policies": {name: summary}, ...}``."""
    base = predictors.policy or PolicyConfig()
    cal, card, crit = predictors.calibrator, predictors.card, predictors.critique
    signals = {}
    budgets = {}
    for rec in progress(records, desc=f"{desc}: signals"):
        cp = critique_probabilities(rec, crit) if (use_critique and crit is not None) else {}
        signals[rec.id] = record_signals(rec, cal, critique_p=cp)
        if card is not None:
            budgets[rec.id] = card_budget(rec, card, base.card_quantile)
    overhead = overhead_for(
        records[0].backbone if records else "flux-kontext",
        critique=use_critique and crit is not None,
        seconds_per_nfe=_seconds_per_nfe(records),
    )
    out: dict = {
        "policies": {},
        "reference": REFERENCE,
        "base_policy": base.to_dict(),
        "requests": len(records),
    }
    for name in policies:
        try:
            outcomes = replay_policy(
                records,
                name,
                base,
                signals=lambda r: signals[r.id],
                card=(lambda r: budgets[r.id]) if card is not None else None,
                overhead=overhead,
            )
        except ReplayError as exc:
            out["policies"][name] = {"error": str(exc)}
            continue
        summary = summarize(outcomes)
        missing = [o for o in outcomes if not o.complete]
        if missing:
            summary["note"] = (
                f"{len(missing)} request(s) lacked an attempt this policy needed, e.g. {missing[0].id!r} "
                f"(candidate, round, reasoning_tokens) = {missing[0].missing}; those stopped early"
            )
        out["policies"][name] = summary
    ref = out["policies"].get(REFERENCE, {})
    for s in out["policies"].values():
        if "nfe_per_request" in s and ref.get("nfe_per_request"):
            s["speedup_nfe_vs_best_of_8"] = ref["nfe_per_request"] / max(s["nfe_per_request"], 1e-9)
            if ref.get("gpu_seconds_per_request") and s.get("gpu_seconds_per_request"):
                s["speedup_seconds_vs_best_of_8"] = (
                    ref["gpu_seconds_per_request"] / s["gpu_seconds_per_request"]
                )
    return out


def _seconds_per_nfe(records) -> float | None:
    num = den = 0.0
    for rec in records[:200]:
        for a in rec.attempts:
            if a.cost.latency_s is not None and a.cost.nfe:
                num += a.cost.latency_s
                den += a.cost.nfe
    return num / den if den else None


def format_table(result: dict) -> str:
    head = f"{'policy':<18} {'score':>7} {'pass':>7} {'NFE/req':>9} {'GPU-s/req':>10} {'x vs Bo8':>9}"
    lines = [head, "-" * len(head)]
    for name, s in result["policies"].items():
        if "error" in s:
            lines.append(f"{name:<18} {'n/a: ' + s['error']}")
            continue
        gs = s.get("gpu_seconds_per_request")
        sp = s.get("speedup_nfe_vs_best_of_8")
        lines.append(
            f"{name:<18} {s['mean_score']:>7.3f} {s['pass_rate']:>7.3f} {s['nfe_per_request']:>9.1f} "
            f"{(f'{gs:.2f}' if gs is not None else '-'):>10} {(f'{sp:.2f}' if sp else '-'):>9}"
        )
        if "note" in s:
            lines.append(f"{'':<18} note: {s['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ade-replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", required=True, help="a judged trace dataset (format v1)")
    p.add_argument("--predictors", required=True, help="an export directory (make train)")
    p.add_argument(
        "--policies",
        default=",".join(POLICY_NAMES),
        help=f"comma-separated (default: {','.join(POLICY_NAMES)})",
    )
    p.add_argument("--limit", type=int, default=None, help="replay the first N valid requests only")
    p.add_argument("--no-critique", action="store_true", help="do not run the critique head on stored images")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    try:
        records, rejects = load_records(Path(args.traces), images="none")
        if rejects:
            print(
                f"ade-replay: {len(rejects)} record(s) rejected (run `ade-traces validate`)", file=sys.stderr
            )
        if args.limit:
            records = records[: args.limit]
        if not records:
            print(f"ade-replay: {args.traces}: no valid records", file=sys.stderr)
            return 2
        if not any(a.judge is not None for r in records for a in r.attempts):
            print(
                f"ade-replay: {args.traces}: no judge labels; label the traces first (ade-judge)",
                file=sys.stderr,
            )
            return 2
        predictors = Predictors.load(args.predictors)
        for what, why in predictors.load_failures.items():
            print(f"ade-replay: {what} not loaded ({why})", file=sys.stderr)
        policies = [x.strip() for x in args.policies.split(",") if x.strip()]
        result = evaluate(records, predictors, policies, use_critique=not args.no_critique)
    except (ADEError, OSError, ValueError) as exc:
        print(f"ade-replay: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        print(json.dumps(result, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
