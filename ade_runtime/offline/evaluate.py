"""Replay evaluation: every policy over a judged trace dataset, exactly, with what ADE's checks cost.

The attempts already exist, so every policy is replayed without a GPU (``ade_runtime.offline.replay``);
compute figures include ADE's own overhead (``ade_runtime.overhead``). With a confidence level, each
policy is paired with Best-of-8 on the same requests (``ade_runtime.offline.intervals``) and the
compute-quality curves are drawn (``ade_runtime.offline.curves``). ``ade-replay`` prints
``format_table`` of ``evaluate``; the bench report renders the same table in Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ade_runtime.offline import ReplayError, replay_policy, summarize
from ade_runtime.offline.curves import compute_curves
from ade_runtime.offline.intervals import paired_by_id
from ade_runtime.offline.signals import card_prediction, critique_signals, record_signals
from ade_runtime.overhead import overhead_for, seconds_per_nfe, verifier_seconds
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress

REFERENCE = "best_of_8"

NO_CONFIDENCE = (
    "no confidence is available (the export has no calibration and no critique is used), so every "
    "selection policy picks the first attempt; export a calibration (ade-train calibrate) to compare them"
)


@dataclass
class Signals:
    """What the predictors say about each kept record, computed once for every policy."""

    records: list = field(default_factory=list)  # the records whose signals could be computed
    signals: dict = field(default_factory=dict)  # id -> AttemptSignals
    budgets: dict = field(default_factory=dict)  # id -> (budget, reasoning tokens), with CARD
    preds: dict = field(default_factory=dict)  # id -> CARD's prediction, with CARD
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why it was left out


def compute_signals(
    records, predictors: Predictors, base: PolicyConfig, *, use_critique: bool, desc: str
) -> Signals:
    """Calibrated signals (and CARD's budgets) per record; a record whose image cannot be decoded is skipped."""
    cal, card, crit = predictors.calibrator, predictors.card, predictors.critique
    out = Signals()
    signals, budgets, preds = out.signals, out.budgets, out.preds
    for rec in progress(records, desc=f"{desc}: signals"):
        try:
            cp, refine = critique_signals(rec, crit) if (use_critique and crit is not None) else ({}, None)
        except (OSError, ValueError) as exc:  # an image the header check passed but cannot be decoded
            out.skipped[rec.id] = f"an image cannot be decoded ({exc})"
            continue
        signals[rec.id] = record_signals(rec, cal, critique_p=cp, refine_ok=refine)
        if card is not None:
            preds[rec.id] = card_prediction(rec, card)
            budgets[rec.id] = preds[rec.id].plan(base.card_quantile, card_cap=base.card_cap)
        out.records.append(rec)
    return out


def replay_policies(
    sig: Signals,
    policies,
    base: PolicyConfig,
    *,
    with_card: bool,
    overhead: Any,
    max_seconds: float | None,
) -> tuple[dict[str, dict], dict[str, dict[str, float]]]:
    """Each policy's summary (or ``{"error": ...}``) and its score per request id."""
    summaries: dict[str, dict] = {}
    per_request: dict[str, dict[str, float]] = {}
    for name in policies:
        try:
            outcomes = replay_policy(
                sig.records,
                name,
                base,
                signals=lambda r: sig.signals[r.id],
                card=(lambda r: sig.budgets[r.id]) if with_card else None,
                overhead=overhead,
                max_seconds=max_seconds,
            )
        except ReplayError as exc:
            summaries[name] = {"error": str(exc)}
            continue
        summary = summarize(outcomes)
        per_request[name] = {o.id: o.score for o in outcomes}
        missing = [o for o in outcomes if not o.complete]
        if missing:
            summary["note"] = (
                f"{len(missing)} request(s) lacked an attempt this policy needed, e.g. {missing[0].id!r} "
                f"(candidate, round, reasoning_tokens) = {missing[0].missing}; those stopped early"
            )
        summaries[name] = summary
    return summaries, per_request


def add_speedups(summaries: dict[str, dict]) -> None:
    """Each policy's NFE (and GPU-second) speed-up over Best-of-8, where both are known."""
    ref = summaries.get(REFERENCE, {})
    for s in summaries.values():
        if "nfe_per_request" in s and ref.get("nfe_per_request"):
            s["speedup_nfe_vs_best_of_8"] = ref["nfe_per_request"] / max(s["nfe_per_request"], 1e-9)
            if ref.get("gpu_seconds_per_request") and s.get("gpu_seconds_per_request"):
                s["speedup_seconds_vs_best_of_8"] = (
                    ref["gpu_seconds_per_request"] / s["gpu_seconds_per_request"]
                )


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
    pair_with: tuple[str, ...] = (),
) -> dict:
    """Replay ``policies`` over ``records``; returns ``{"policies": {name: summary}, ...}``.

    With ``ci`` (a level such as 0.9) every policy carries the paired bootstrap interval of its mean
    score minus Best-of-8's on the same requests (and ``vs_<name>`` against each replayed policy named in
    ``pair_with``, e.g. a certificate's reference), and ``"curves"`` holds the compute-quality curves
    (``ade_runtime.offline.curves``): Best-of-N per selector and reasoning level, and the sweeps.
    """
    base = predictors.policy or PolicyConfig()
    with_card = predictors.card is not None
    critique = use_critique and predictors.critique is not None
    sig = compute_signals(records, predictors, base, use_critique=use_critique, desc=desc)
    records = sig.records
    overhead = overhead_for(
        records[0].backbone if records else "flux-kontext",
        critique=critique,
        seconds_per_nfe=seconds_per_nfe(records),
        verify_s=verifier_seconds(records),
    )
    summaries, per_request = replay_policies(
        sig, policies, base, with_card=with_card, overhead=overhead, max_seconds=max_seconds
    )
    add_speedups(summaries)
    out: dict = {
        "policies": summaries,
        "reference": REFERENCE,
        "base_policy": base.to_dict(),
        "requests": len(records),
        "skipped": sig.skipped,
        # every confidence is NaN: selection by confidence degenerates to the first attempt
        "no_confidence": predictors.calibrator is None and not critique,
    }
    if ci is not None and records:
        if REFERENCE in per_request:
            for name, scores in per_request.items():
                summaries[name]["vs_best_of_8"] = paired_by_id(
                    scores, per_request[REFERENCE], level=ci
                ).to_dict()
        for other in pair_with:
            if other in per_request:
                for name, scores in per_request.items():
                    summaries[name][f"vs_{other}"] = paired_by_id(
                        scores, per_request[other], level=ci
                    ).to_dict()
        out["curves"] = compute_curves(
            records,
            base,
            (lambda r: sig.signals[r.id]) if not out["no_confidence"] else None,
            overhead=overhead,
            card=(lambda r: sig.preds[r.id]) if with_card else None,
            level=ci,
            ade_policies=ade_policies,
        )
    return out


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
