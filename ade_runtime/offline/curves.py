"""Compute-quality curves over a judged dataset: every baseline at several settings, with paired intervals.

A single Best-of-8 point flatters or handicaps it depending on the selector, so ADE is compared with
curves (the strongest baseline a user would pick, at the compute they would pick it):

* Best-of-N for N = 1, 2, 4, 8, ... (as far as the logged candidates go), for every selector: the
  calibrated confidence, each cheap score alone (``clip_t``, ...) and the judge (an upper bound no
  deployment has);
* the same with the reasoning budget fixed at each logged level (``best_of_N@512``) on a reasoning
  backbone;
* ``confidence_stop`` (ADE-CoT-like) across tau_high and ``card_only`` (PhysEdit-like) across CARD
  quantiles, each around ``PolicyConfig()``'s defaults, and ADE itself at its calibrated setting.

Every point carries the paired bootstrap interval (``ade_runtime.offline.intervals``) of its mean judge
score minus the reference's (Best-of-8 selected by the calibrated confidence) on the same requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from ade_runtime.offline.intervals import paired_by_id
from ade_runtime.offline.replay import Outcome, Overhead, replay_signals
from ade_runtime.offline.signals import AttemptSignals
from ade_runtime.policy.config import PolicyConfig, preset
from ade_runtime.traces.records import EditRecord

Key = tuple[int, int, int]
SignalFn = Callable[[EditRecord], AttemptSignals]
CardPredictFn = Callable[[EditRecord], object]  # -> a BudgetPrediction (anything with .plan(q))

REFERENCE = "best_of_8"
TAU_HIGH_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
QUANTILE_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95)


def _n_values(records: Sequence[EditRecord]) -> list[int]:
    most = min((1 + max(a.candidate for a in r.attempts)) for r in records)
    ns, n = [], 1
    while n <= most:
        ns.append(n)
        n *= 2
    return ns


def score_selector(name: str) -> SignalFn:
    """Select by one cheap score alone (its raw value is the ranking; no calibration, no preview)."""

    def fn(rec: EditRecord) -> AttemptSignals:
        return AttemptSignals({a.key: float(a.scores.get(name, math.nan)) for a in rec.attempts})

    return fn


def _replay(
    records: Sequence[EditRecord],
    cfg: PolicyConfig,
    signals: SignalFn,
    overhead: Overhead,
    card: CardPredictFn | None,
) -> list[Outcome]:
    out = []
    for rec in records:
        plan = card(rec).plan(cfg.card_quantile, card_cap=cfg.card_cap) if cfg.use_card else None  # type: ignore[misc]
        out.append(replay_signals(rec, cfg, signals(rec), plan, overhead=overhead))
    return out


def _point(curve: str, label: str, outcomes: list[Outcome], **extra) -> dict:
    n = len(outcomes)
    secs = [o.seconds for o in outcomes]
    return {
        "curve": curve,
        "policy": label,
        **extra,
        "requests": n,
        "mean_score": sum(o.score for o in outcomes) / n,
        "pass_rate": sum(o.passed for o in outcomes) / n,
        "nfe_per_request": sum(o.nfe for o in outcomes) / n,
        "gpu_seconds_per_request": (sum(secs) / n) if all(math.isfinite(s) for s in secs) else None,
        "incomplete": sum(not o.complete for o in outcomes),
        "_scores": {o.id: o.score for o in outcomes},
    }


def compute_curves(
    records: Sequence[EditRecord],
    base: PolicyConfig,
    signals: SignalFn | None,
    *,
    overhead: Overhead = Overhead(),
    card: CardPredictFn | None = None,
    score_names: Sequence[str] | None = None,
    level: float = 0.9,
    seed: int = 0,
    ade_policies: Mapping[str, PolicyConfig] | None = None,
) -> dict:
    """All curves and their points; ``signals`` is the calibrated confidence (None: no calibrator).

    ``ade_policies`` (label -> policy, e.g. the settings certified at other quality targets) add the
    curve "ade across targets"."""
    if not records:
        raise ValueError("compute_curves: no records")
    ns = _n_values(records)
    levels = sorted({a.reasoning_tokens for r in records for a in r.attempts})
    names = list(score_names) if score_names is not None else _common_scores(records)
    selectors: dict[str, SignalFn | None] = {}
    if signals is not None:
        selectors["confidence"] = signals
    for s in names:
        selectors[s] = score_selector(s)
    selectors["judge"] = None
    points = []
    for sel, fn in selectors.items():
        for t in levels if len(levels) > 1 else [None]:
            suffix = "" if t is None or t == levels[0] else f"@{t}"
            for n in ns:
                cfg = preset(f"best_of_{n}_oracle" if fn is None else f"best_of_{n}", base)
                cfg = replace(cfg, reasoning_tokens=t)
                outs = _replay(records, cfg, fn or _nan_signals, overhead, None)
                curve = f"best_of_N by {sel}{suffix}"
                points.append(
                    _point(curve, f"best_of_{n}{suffix}", outs, n=n, selector=sel, reasoning_tokens=t)
                )
    if signals is not None:
        sweep = PolicyConfig()  # the sweeps vary one knob around the defaults, whatever was exported
        for th in TAU_HIGH_SWEEP:
            cfg = replace(preset("confidence_stop", sweep), tau_high=th, tau_low=min(sweep.tau_low, th))
            outs = _replay(records, cfg, signals, overhead, card)
            points.append(_point("confidence_stop", f"confidence_stop tau_high={th:g}", outs, tau_high=th))
        if card is not None:
            for q in QUANTILE_SWEEP:
                cfg = replace(preset("card_only", sweep), card_quantile=q)
                outs = _replay(records, cfg, signals, overhead, card)
                points.append(_point("card_only", f"card_only q={q:g}", outs, card_quantile=q))
            outs = _replay(records, preset("ade", base), signals, overhead, card)
            points.append(_point("ade", "ade (calibrated)", outs))
        for label, pol in (ade_policies or {}).items():
            if pol.use_card and card is None:
                continue
            outs = _replay(records, pol, signals, overhead, card)
            points.append(_point("ade across targets", label, outs))
    ref = _reference(points, levels[0])
    for p in points:
        d = paired_by_id(p["_scores"], ref["_scores"], level=level, seed=seed)
        p["vs_reference"] = d.to_dict()
    for p in points:
        del p["_scores"]
    return {
        "reference": ref["policy"] + f" by {ref.get('selector', '?')}",
        "level": level,
        "requests": len(records),
        "selectors": list(selectors),
        "points": points,
    }


def _reference(points: list[dict], base_tokens: int) -> dict:
    """Best-of-8 (or the largest N logged) without thinking, by the calibrated confidence when there is
    one, else by the first cheap score: the baseline a user would deploy."""
    bon = [
        p
        for p in points
        if p.get("selector") not in (None, "judge") and p.get("reasoning_tokens") in (None, base_tokens)
    ]
    sel = "confidence" if any(p["selector"] == "confidence" for p in bon) else bon[0]["selector"]
    mine = [p for p in bon if p["selector"] == sel]
    eight = [p for p in mine if p["n"] == 8]
    return eight[0] if eight else max(mine, key=lambda p: p["n"])


def _nan_signals(rec: EditRecord) -> AttemptSignals:
    return AttemptSignals({a.key: math.nan for a in rec.attempts})


def _common_scores(records: Sequence[EditRecord]) -> list[str]:
    names: set[str] | None = None
    for rec in records:
        for a in rec.attempts:
            have = {
                k
                for k, v in a.scores.items()
                if not k.startswith("preview_") and k not in ("confidence", "critique")
            }
            names = have if names is None else names & have
    return sorted(names or [])


def format_curves(result: dict) -> str:
    """The curves as a text table, each point with its paired interval against the reference."""
    head = f"{'curve':<28} {'policy':<30} {'score':>6} {'GPU-s/req':>9} {'NFE/req':>8}  vs reference ({result['reference']})"
    lines = [head, "-" * len(head)]
    for p in result["points"]:
        gs = p["gpu_seconds_per_request"]
        d = p["vs_reference"]
        lines.append(
            f"{p['curve']:<28} {p['policy']:<30} {p['mean_score']:>6.3f} "
            f"{(f'{gs:.1f}' if gs is not None else 'n/a'):>9} {p['nfe_per_request']:>8.0f}  "
            f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['verdict']}"
        )
    n = result["requests"]
    lines.append(
        f"{int(result['level'] * 100)}% paired bootstrap intervals over {n} requests"
        + (" (small sample: under 300 requests)" if n < 300 else "")
    )
    return "\n".join(lines)
