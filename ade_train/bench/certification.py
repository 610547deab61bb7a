"""Does the certificate hold? Re-split coverage of certified thresholds against today's threshold search.

Every setting of the calibration grid is replayed once over a judged pool of requests the predictors
never saw (the bench's held-out shifted set), with the exported calibrator, critique and CARD: a matrix
of judge scores and GPU-seconds, requests x settings, plus the reference (Best-of-8 with the same
calibrated selector). Each of ``n_splits`` random re-splits then draws a calibration part, certifies on
it (Pareto front on one half, fixed-sequence Learn-then-Test on the other, ``ade_train.calibrate.risk_control``) and
scores the chosen setting on the untouched rest; today's search (the cheapest setting meeting the target
on the whole calibration part) is scored beside it. The certificate should meet its target on the
untouched part in at least 1 - delta of the re-splits; the search carries no such promise.

Testbed figures (synthetic world, modelled GPU-seconds), not results on real models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ade_runtime.offline import replay_record, replay_signals
from ade_runtime.offline.signals import card_prediction, critique_signals, record_signals
from ade_runtime.overhead import overhead_for, seconds_per_nfe, verifier_seconds
from ade_runtime.policy import PolicyConfig, budget_levels, preset
from ade_runtime.policy.signals import VLM_FEATURE
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.progress import progress
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate.coverage import resplit_coverage
from ade_train.calibrate.risk_control import RiskSpec


def policy_matrix(
    records: Sequence[EditRecord], predictors: Predictors, configs: Sequence[PolicyConfig], reference: str
) -> dict:
    """Judge score, pass and GPU-seconds of every (request, setting), and of the reference per request."""
    base = predictors.policy or PolicyConfig()
    overhead = overhead_for(
        records[0].backbone,
        critique=predictors.critique is not None,
        seconds_per_nfe=seconds_per_nfe(records),
        verify_s=verifier_seconds(records),
    )
    signals = {}
    for rec in progress(records, desc="certification: signals"):
        cp, rf = critique_signals(rec, predictors.critique) if predictors.critique is not None else ({}, None)
        signals[rec.id] = record_signals(rec, predictors.calibrator, critique_p=cp, refine_ok=rf)
    cards = (
        {r.id: card_prediction(r, predictors.card) for r in records} if predictors.card is not None else {}
    )
    n, k = len(records), len(configs)
    scores, passed, seconds = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    for j, cfg in enumerate(progress(configs, desc="certification: replay grid")):
        for i, rec in enumerate(records):
            plan = (
                cards[rec.id].plan(cfg.card_quantile, card_cap=cfg.card_cap)
                if cfg.use_card and rec.id in cards
                else None
            )
            o = replay_signals(rec, cfg, signals[rec.id], plan, overhead=overhead)
            scores[i, j], passed[i, j], seconds[i, j] = o.score, float(o.passed), o.seconds
    ref_cfg = preset(reference, base)
    ref = [
        replay_record(
            rec,
            ref_cfg,
            signals[rec.id].confidence,
            overhead=overhead,
            first_stage=signals[rec.id].first_stage,
        )
        for rec in records
    ]
    return {
        "scores": scores,
        "passed": passed,
        "seconds": seconds,
        "reference_scores": np.array([o.score for o in ref]),
        "reference_seconds": np.array([o.seconds for o in ref]),
        "overhead": overhead,
        "signals": signals,
    }


def grid_configs(records: Sequence[EditRecord], predictors: Predictors) -> list[PolicyConfig]:
    """The settings ``ade-train calibrate`` searches, for the export at hand (CARD quantiles or fixed budgets)."""
    from ade_train.calibrate.config import load_config
    from ade_train.calibrate.search import SearchGrid, searched_base

    # the base calibration searches from (not the export's own policy, which may be the reference's)
    base, _ = searched_base(load_config().policy_base, records)
    sample = records[:50]
    has_previews = any(k.startswith("preview_") for r in sample for a in r.attempts for k in a.scores)
    has_verifier = any(VLM_FEATURE in a.scores for r in sample for a in r.attempts)
    return SearchGrid().configs(
        base, use_card=predictors.card is not None, use_prune=has_previews, levels=budget_levels(records),
        use_verifier=has_verifier,
    )  # fmt: skip


def run(
    records: Sequence[EditRecord],
    predictors: Predictors,
    *,
    targets: Sequence[float] = (1.0, 0.95),
    delta: float = 0.1,
    n_splits: int = 200,
    reference: str = "best_of_8",
    seed: int = 0,
) -> dict:
    """Re-split coverage of the certificate (WSR and Hoeffding-Bentkus p-values) and of today's search."""
    t0 = time.perf_counter()
    configs = grid_configs(records, predictors)
    m = policy_matrix(records, predictors, configs, reference)
    rows = []
    for target in targets:
        for p_value in ("wsr", "hb"):
            spec = RiskSpec("relative", float(target), delta=delta, p_value=p_value)
            cov = resplit_coverage(
                spec, m["scores"], m["reference_scores"], m["seconds"], n_splits=n_splits, seed=seed
            )
            cov["p_value"] = p_value
            cov["reference_mean_cost"] = float(m["reference_seconds"].mean())
            rows.append(cov)
    return {
        "n_requests": len(records),
        "n_settings": len(configs),
        "delta": delta,
        "reference": reference,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
