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

from ade_runtime.cli._io import add_predictor_args, cli_main, load_predictors, reject_lines
from ade_runtime.errors import InputError
from ade_runtime.overhead import overhead_for, seconds_per_nfe, verifier_seconds
from ade_runtime.policy import POLICY_NAMES, PolicyConfig, ReplayError, replay_policy, summarize
from ade_runtime.policy.curves import compute_curves, format_curves
from ade_runtime.policy.signals import card_prediction, critique_signals, record_signals
from ade_runtime.policy.stats import paired_by_id
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress
from ade_runtime.traces import load_records

REFERENCE = "best_of_8"


# long function: the replay pipeline in order: signals once, every policy, intervals, curves
def evaluate(
    records,
    predictors: Predictors,
    policies,
    *,
    use_critique: bool = True,
    desc: str = "replay",
    ci: float | None = None,
    ade_policies: dict | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Replay ``policies`` over ``records``; returns ``{"policies": {name: summary}, ...}``.

    With ``ci`` (a level such as 0.9) every policy carries the paired bootstrap interval of its mean
    score minus Best-of-8's on the same requests, and ``"curves"`` holds the compute-quality curves
    (``ade_runtime.policy.curves``): Best-of-N per selector and reasoning level, and the sweeps.
    """
    base = predictors.policy or PolicyConfig()
    cal, card, crit = predictors.calibrator, predictors.card, predictors.critique
    signals = {}
    budgets = {}
    preds = {}
    per_request: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    kept = []
    for rec in progress(records, desc=f"{desc}: signals"):
        try:
            cp, refine = critique_signals(rec, crit) if (use_critique and crit is not None) else ({}, None)
        except (OSError, ValueError) as exc:  # an image the header check passed but cannot be decoded
            skipped[rec.id] = f"an image cannot be decoded ({exc})"
            continue
        signals[rec.id] = (*record_signals(rec, cal, critique_p=cp), refine)
        if card is not None:
            preds[rec.id] = card_prediction(rec, card)
            budgets[rec.id] = (
                int(preds[rec.id].quantile(base.card_quantile)),
                int(preds[rec.id].reasoning_tokens),
            )
        kept.append(rec)
    records = kept
    overhead = overhead_for(
        records[0].backbone if records else "flux-kontext",
        critique=use_critique and crit is not None,
        seconds_per_nfe=seconds_per_nfe(records),
        verify_s=verifier_seconds(records),
    )
    out: dict = {
        "policies": {},
        "reference": REFERENCE,
        "base_policy": base.to_dict(),
        "requests": len(records),
        "skipped": skipped,
        # every confidence is NaN: selection by confidence degenerates to the first attempt
        "no_confidence": cal is None and not (use_critique and crit is not None),
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
                max_seconds=max_seconds,
            )
        except ReplayError as exc:
            out["policies"][name] = {"error": str(exc)}
            continue
        summary = summarize(outcomes)
        per_request[name] = {o.id: o.score for o in outcomes}
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
    if ci is not None and records:
        if REFERENCE in per_request:
            for name, scores in per_request.items():
                d = paired_by_id(scores, per_request[REFERENCE], level=ci)
                out["policies"][name]["vs_best_of_8"] = d.to_dict()
        out["curves"] = compute_curves(
            records,
            base,
            (lambda r: signals[r.id]) if not out["no_confidence"] else None,
            overhead=overhead,
            card=(lambda r: preds[r.id]) if card is not None else None,
            level=ci,
            ade_policies=ade_policies,
        )
    return out


NO_CONFIDENCE = (
    "no confidence is available (the export has no calibration and no critique is used), so every "
    "selection policy picks the first attempt; export a calibration (ade-train calibrate) to compare them"
)


def format_table(result: dict, markdown: bool = False) -> str:
    """The policy comparison as a fixed-width text table, or as the Markdown table of the bench report."""
    cols = ("policy", "score", "pass", "NFE/req", "GPU-s/req", "x vs Bo8", "verif/req")
    if markdown:
        cols = (
            "policy",
            "mean score",
            "pass rate",
            "NFE / request",
            "GPU-s / request",
            "speed-up vs Best-of-8 (NFE)",
            "verifier calls / request",
        )
        lines = ["| " + " | ".join(cols) + " |", "|---|---:|---:|---:|---:|---:|---:|"]
    else:
        head = f"{cols[0]:<18} {cols[1]:>7} {cols[2]:>7} {cols[3]:>9} {cols[4]:>10} {cols[5]:>9} {cols[6]:>9}"
        if any("vs_best_of_8" in s for s in result["policies"].values()):
            level = next(
                s["vs_best_of_8"]["level"] for s in result["policies"].values() if "vs_best_of_8" in s
            )
            head += f"  score - Best-of-8 [{level:.0%} paired CI]"
        lines = [head, "-" * len(head)]
    for name, s in result["policies"].items():
        if "error" in s:
            lines.append(
                f"| `{name}` | n/a | | | | {s['error']} |" if markdown else f"{name:<18} n/a: {s['error']}"
            )
            continue
        gs = s.get("gpu_seconds_per_request")
        sp = s.get("speedup_nfe_vs_best_of_8")
        gs_text = "-" if gs is None else f"{gs:.2f}"
        if markdown:
            lines.append(
                f"| `{name}` | {s['mean_score']:.3f} | {s['pass_rate']:.3f} | {s['nfe_per_request']:.1f} | "
                f"{gs_text} | {'-' if not sp else f'{sp:.2f}x'} | {s.get('verifier_calls_per_request', 0):.2f} |"
            )
            continue
        vs = s.get("vs_best_of_8")
        vs_text = "" if not vs else f"  {vs['diff']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}] {vs['verdict']}"
        lines.append(
            f"{name:<18} {s['mean_score']:>7.3f} {s['pass_rate']:>7.3f} {s['nfe_per_request']:>9.1f} "
            f"{gs_text:>10} {(f'{sp:.2f}' if sp else '-'):>9} {s.get('verifier_calls_per_request', 0):>9.2f}{vs_text}"
        )
        if "note" in s:
            lines.append(f"{'':<18} note: {s['note']}")
    if result.get("no_confidence") and not markdown:
        lines.append(f"note: {NO_CONFIDENCE}")
    return "\n".join(lines)


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
