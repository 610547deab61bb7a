"""CARD's ablations (issue 14): does a learned budget and token choice earn its place in ADE?

Every arm is ADE's calibrated policy replayed exactly over the same logged attempts
(``ade_runtime.offline.replay_record``); only the attempt budget and the reasoning tokens change:

- budget: CARD's, the per-category prior's (same artifact format), a constant budget (the policy's
  ``default_budget``) and a constant matched to CARD's mean budget -- all without thinking;
- tokens, at CARD's budgets: never think, always think (the largest level), as CARD chooses;
- a sweep of the gain-per-cost multiplier (``tokens_card@L``), each beside a control that thinks on a
  random subset of the same size (``tokens_random@L``): whether CARD's per-request choice of *which*
  requests think is worth more than the thinking rate alone.

Each arm reports the mean judge score and GPU-seconds per request; each comparison a paired 90%
bootstrap interval of both differences (``ade_runtime.offline.intervals.paired_by_id``), and the issue's
targets are checked on them ("equal score" = the score interval is not a loss).

Output of ``run``::

    {"n_requests", "quantile", "level", "seconds",
     "arms": {name: {"mean_score", "pass_rate", "gpu_seconds_per_request", "mean_budget", "think_rate"}},
     "comparisons": [{"a", "b", "score": PairedDifference dict, "gpu_seconds": PairedDifference dict}],
     "sweep": [{"gain_per_cost", "card": arm, "random": arm, "score": PairedDifference dict (card - random),
                "vs_never" / "vs_always": {"score", "gpu_seconds"}}],
     "targets": {name: {"met": bool, "a", "b", "why"}}}
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ade_runtime.offline import replay_signals
from ade_runtime.offline.intervals import paired_by_id
from ade_runtime.offline.signals import card_prediction, critique_signals, record_signals
from ade_runtime.overhead import overhead_for, seconds_per_nfe, verifier_seconds
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.budget_prediction import choose_tokens
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import EditRecord

COMPARISONS = (
    ("card", "category_prior"),
    ("card", "constant"),
    ("card", "constant_matched"),
    ("tokens_card", "tokens_never"),
    ("tokens_card", "tokens_always"),
)
SWEEP = (0.0, 0.25, 0.5)


def _predictions(records: Sequence[EditRecord], card: Any) -> dict[str, Any]:
    return {rec.id: card_prediction(rec, card) for rec in records}


def _arm(outcomes: list, budgets: list[int], tokens: list[int], base_tokens: int) -> dict[str, float]:
    n = len(outcomes)
    return {
        "mean_score": sum(o.score for o in outcomes) / n,
        "pass_rate": sum(o.passed for o in outcomes) / n,
        "gpu_seconds_per_request": sum(o.seconds for o in outcomes) / n,
        "mean_budget": sum(budgets) / n,
        "think_rate": sum(t != base_tokens for t in tokens) / n,
    }


# long function: the ablation arms and their paired comparisons, built in one table
def run(
    records: Sequence[EditRecord],
    predictors: Predictors,
    *,
    prior: Any = None,
    level: float = 0.9,
    seed: int = 0,
    signals: dict | None = None,
    sweep: Sequence[float] = SWEEP,
) -> dict:
    """The ablations on judged ``records`` with ``predictors`` (CARD + calibration) and the ``prior``
    (a per-category-prior CARD artifact, e.g. ``OUT/alternatives/category_prior``; the arm is left
    out without it). ``signals`` may pass precomputed ``record_signals`` per id."""
    if predictors.card is None:
        raise ValueError("the CARD ablation needs a CARD predictor in the export")
    t0 = time.perf_counter()
    base = replace(predictors.policy or PolicyConfig(), use_card=True)
    q = base.card_quantile
    overhead = overhead_for(
        records[0].backbone,
        critique=predictors.critique is not None,
        seconds_per_nfe=seconds_per_nfe(records),
        verify_s=verifier_seconds(records),
    )
    if signals is None:
        signals = {}
        for rec in records:
            cp, rf = (
                critique_signals(rec, predictors.critique) if predictors.critique is not None else ({}, None)
            )
            signals[rec.id] = record_signals(rec, predictors.calibrator, critique_p=cp, refine_ok=rf)
    card = _predictions(records, predictors.card)
    pri = _predictions(records, prior) if prior is not None else None
    levels = sorted({a.reasoning_tokens for r in records for a in r.attempts})
    never, always = levels[0], levels[-1]
    card_budget = {r.id: card[r.id].plan(q, card_cap=base.card_cap)[0] for r in records}
    matched = max(1, round(sum(card_budget.values()) / len(records)))

    def replay(budget_of, tokens_of) -> tuple[list, list[int], list[int]]:
        outs, bs, ts = [], [], []
        for rec in records:
            b, t = int(budget_of(rec)), int(tokens_of(rec))
            outs.append(replay_signals(rec, base, signals[rec.id], (b, t), overhead=overhead))
            bs.append(b)
            ts.append(t)
        return outs, bs, ts

    arms_spec = {
        "card": (lambda r: card_budget[r.id], lambda r: never),
        "constant": (lambda r: base.default_budget, lambda r: never),
        "constant_matched": (lambda r: matched, lambda r: never),
        "tokens_never": (lambda r: card_budget[r.id], lambda r: never),
        "tokens_always": (lambda r: card_budget[r.id], lambda r: always),
        "tokens_card": (lambda r: card_budget[r.id], lambda r: card[r.id].reasoning_tokens),
    }
    if pri is not None:
        arms_spec["category_prior"] = (
            lambda r: pri[r.id].plan(q, card_cap=base.card_cap)[0],
            lambda r: never,
        )
    arms, per_id = {}, {}
    for name, (bf, tf) in arms_spec.items():
        outs, bs, ts = replay(bf, tf)
        arms[name] = _arm(outs, bs, ts, never)
        per_id[name] = {
            "score": {o.id: o.score for o in outs},
            "seconds": {o.id: o.seconds for o in outs},
        }
    sweep_rows: list[dict] = []
    sweep_outs: list[tuple[dict, list]] = []
    ids = [r.id for r in records]
    for lam in sweep:
        chosen = {}
        for r in records:
            p = card[r.id]
            chosen[r.id] = (
                choose_tokens(p.token_levels, p.token_pass, p.token_seconds, lam)
                if p.token_pass is not None and p.token_seconds
                else p.reasoning_tokens
            )
        k = sum(t != never for t in chosen.values())
        thinks = set(random.Random(seed).sample(ids, k))
        row: dict[str, Any] = {"gain_per_cost": lam}
        runs = {}
        for name, tf in (
            ("card", lambda r, chosen=chosen: chosen[r.id]),
            ("random", lambda r, thinks=thinks: always if r.id in thinks else never),
        ):
            outs, bs, ts = replay(lambda r: card_budget[r.id], tf)
            row[name] = _arm(outs, bs, ts, never)
            runs[name] = outs
        row["score"] = paired_by_id(
            {o.id: o.score for o in runs["card"]},
            {o.id: o.score for o in runs["random"]},
            level=level,
            seed=seed,
        ).to_dict()
        sweep_outs.append((row, runs["card"]))
        sweep_rows.append(row)
    for row, outs in sweep_outs:  # each sweep point against never / always thinking, paired
        for other in ("tokens_never", "tokens_always"):
            row[f"vs_{other[7:]}"] = {
                "score": paired_by_id(
                    {o.id: o.score for o in outs}, per_id[other]["score"], level=level, seed=seed
                ).to_dict(),
                "gpu_seconds": paired_by_id(
                    {o.id: o.seconds for o in outs}, per_id[other]["seconds"], level=level, seed=seed
                ).to_dict(),
            }
    comparisons = []
    for a, b in COMPARISONS:
        if a in per_id and b in per_id:
            comparisons.append(
                {
                    "a": a,
                    "b": b,
                    "score": paired_by_id(
                        per_id[a]["score"], per_id[b]["score"], level=level, seed=seed
                    ).to_dict(),
                    "gpu_seconds": paired_by_id(
                        per_id[a]["seconds"], per_id[b]["seconds"], level=level, seed=seed
                    ).to_dict(),
                }
            )
    return {
        "n_requests": len(records),
        "quantile": q,
        "level": level,
        "constant_budget": base.default_budget,
        "matched_budget": matched,
        "seconds": round(time.perf_counter() - t0, 1),
        "arms": arms,
        "comparisons": comparisons,
        "sweep": sweep_rows,
        "targets": check_targets(comparisons),
    }


def check_targets(comparisons: list[dict]) -> dict[str, dict]:
    """The issue's targets on the paired intervals ("equal score": the score interval is no loss)."""
    by = {(c["a"], c["b"]): c for c in comparisons}
    out = {}

    def cheaper(key, name, strict: bool) -> None:
        c = by.get(key)
        if c is None:
            return
        s, g = c["score"], c["gpu_seconds"]
        equal = s["verdict"] != "loss"
        ok = (g["hi"] < 0) if strict else (g["verdict"] != "win")
        out[name] = {
            "met": bool(equal and ok),
            "a": key[0],
            "b": key[1],
            "why": f"score {s['diff']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}], GPU-s {g['diff']:+.2f} "
            f"[{g['lo']:+.2f}, {g['hi']:+.2f}] per request",
        }

    cheaper(("tokens_card", "tokens_never"), "tokens_beat_never", True)
    cheaper(("tokens_card", "tokens_always"), "tokens_beat_always", True)
    cheaper(("card", "constant"), "card_no_dearer_than_constant", False)
    return out


def text(result: dict) -> str:
    """The ablations as a few lines for the bench report."""
    lines = [f"CARD ablations on {result['n_requests']} requests (quantile {result['quantile']:g}):"]
    for name, a in result["arms"].items():
        lines.append(
            f"  {name:17s} score {a['mean_score']:.4f}  pass {a['pass_rate']:.3f}  GPU-s "
            f"{a['gpu_seconds_per_request']:.2f}  budget {a['mean_budget']:.2f}  thinks {a['think_rate']:.0%}"
        )
    for row in result.get("sweep", []):
        c, r, d = row["card"], row["random"], row["score"]
        lines.append(
            f"  gain/cost {row['gain_per_cost']:<5g} CARD thinks {c['think_rate']:.0%}: score {c['mean_score']:.4f} "
            f"GPU-s {c['gpu_seconds_per_request']:.2f} | random same rate {r['mean_score']:.4f} GPU-s "
            f"{r['gpu_seconds_per_request']:.2f} | CARD - random {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        )
        for k in ("vs_never", "vs_always"):
            if k in row:
                sc, g = row[k]["score"], row[k]["gpu_seconds"]
                lines.append(
                    f"      {k}: score {sc['diff']:+.4f} [{sc['lo']:+.4f}, {sc['hi']:+.4f}], GPU-s {g['diff']:+.2f} "
                    f"[{g['lo']:+.2f}, {g['hi']:+.2f}]"
                )
    for name, t in result["targets"].items():
        lines.append(
            f"  target {name}: {'met' if t['met'] else 'NOT met'} ({t['a']} vs {t['b']}: {t['why']})"
        )
    return "\n".join(lines)
