"""The calibration job's outputs: its metrics, report files, export section and W&B run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.artifacts import CALIBRATION_NAME, atomic_write_bytes
from ade_runtime.predictors.calibration import Calibrator
from ade_train.calibrate.config import CalibrateConfig
from ade_train.calibrate.features import SignalTable
from ade_train.calibrate.search import SearchResult
from ade_train.export import PredictorSection, export_predictors

RUN_SUBDIR = "calibrate"  # OUT/calibrate/wandb_run.json: calibration's own W&B run id (CARD's is OUT/)


def job_metrics(
    primary: dict, fallback: dict | None, result: SearchResult, table: SignalTable, split
) -> dict[str, Any]:
    # the conservative export (the reference policy) is no grid row: its figures are the reference's
    chosen = next((r for r in result.candidates if r["chosen"]), None) or result.reference
    m: dict[str, Any] = {
        "n_requests": len(split.records),
        "n_attempts": int(sum(len(v) for v in table.labels.values())),
        "n_fit_primary": primary["n"],
        "ece_before": primary["ece_before"],
        "ece_after": primary["ece_after"],
        "ece_in_sample": primary["ece_in_sample"],
        "method": primary["choice"].method,
        "feasible": result.feasible,
        "target_score": result.target_score,
        "reference_mean_score": result.reference["mean_score"],
        "reference_compute": result.reference["compute"],
        "mean_score": chosen["mean_score"],
        "pass_rate": chosen["pass_rate"],
        "compute": chosen["compute"],
        "compute_unit": result.compute_key,
        "n_candidates": len(result.candidates),
        "guarantee_slack": result.guarantee["slack"],
        "guarantee_se_margin": result.guarantee["se_margin"],
    }
    if fallback:
        m["fallback_method"] = fallback["choice"].method
        m["fallback_ece_after"] = fallback["ece_after"]
    for k in ("tau_high", "tau_low", "s_max", "card_quantile", "prune_threshold", "default_budget"):
        m[k] = getattr(result.chosen, k)
    ref = m["reference_compute"]
    if ref and np.isfinite(ref) and np.isfinite(m["compute"]) and m["compute"] > 0:
        m["speedup_vs_reference"] = ref / m["compute"]
    return m


def build_report(
    cfg: CalibrateConfig,
    metrics: dict[str, Any],
    result: SearchResult,
    primary: dict,
    fallback: dict | None,
    cheap: list[str],
    notes: list[str],
    warnings: list[str],
) -> dict[str, Any]:
    """``OUT/calibration_report.json``: metrics, the chosen policy, the method choice, the config."""
    return {
        "metrics": metrics,
        "chosen_policy": result.chosen.to_dict(),
        "feasible": result.feasible,
        "reference": result.reference,
        "target_score": result.target_score,
        "guarantee": result.guarantee,
        "warnings": list(warnings) + result.warnings,
        "notes": notes,
        "method": {
            "primary": {"method": primary["choice"].method, "reason": primary["choice"].reason},
            "fallback": None
            if not fallback
            else {"method": fallback["choice"].method, "reason": fallback["choice"].reason},
            "candidates": {
                "primary": primary["choice"].candidates,
                "fallback": fallback["choice"].candidates if fallback else None,
            },
        },
        "features": {"primary": list(primary["names"]), "fallback": list(cheap) if fallback else []},
        "config": dict(asdict(cfg)),
    }


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and v is not None and np.isfinite(float(v))
    }


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, sort_keys=True, indent=2, default=json_default, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def claim_sentence(claim: dict | None) -> str:
    """The guarantee as users read it: epsilon, delta, n, the reference and the compute share."""
    if not claim:
        return ""
    share = claim.get("compute_share")
    bo8 = claim.get("best_of_8_share")
    cost = (
        f"{share:.0%} of the reference's {claim['compute_unit'].replace('_', '-')}"
        if share is not None
        else ""
    )
    if bo8 is not None and claim["reference"] != "best_of_8":
        cost += f" ({bo8:.0%} of Best-of-8's)"
    asked = claim.get("requested_target")
    widened = ""
    if asked is not None:  # the fit part's power plan declared a wider margin before testing
        need = claim.get("requested_n_needed")
        more = (
            f"epsilon = {asked:.3g} needs about {max(0, need - claim['n_certify'])} more"
            if need is not None
            else f"epsilon = {asked:.3g} is out of reach of the policies found"
        )
        widened = (
            f" (certified epsilon = {claim['target']:.3g} on {claim['n_certify']} requests; {more}: "
            "the margin was declared from the fit part's power plan, before the certification requests were read)"
        )
    if claim["status"] == "certified":
        return (
            f"Certified: mean judge score {claim['claim']} ({claim['reference']}), on {claim['n_certify']} "
            f"certification requests kept apart, p = {claim['p_value']:.3g}; it spends {cost} on them.{widened}"
        )
    return (
        f"NOT certified ({claim['status']}): the declared claim {claim['claim']} ({claim['reference']}) "
        f"could not be certified on {claim['n_certify']} requests; the export spends {cost}.{widened}"
    )


def export_calibration(
    out: Path, calibrator: Calibrator, metrics, result: SearchResult, split, method: dict, notes, warnings
) -> Path:
    values = numeric(metrics)
    pol = result.chosen
    section = PredictorSection(
        name=CALIBRATION_NAME,
        title="Calibrated confidence P(pass) and adaptive-policy thresholds",
        data=split.data,
        metrics=values,
        intended_use=(
            f"Calibrator.from_pretrained(dir).predict_proba(signals) -> P(pass) from {calibrator.feature_names} "
            f"({method['choice'].method}); .policy holds tau_high={pol.tau_high}, tau_low={pol.tau_low}, "
            f"s_max={pol.s_max}, card_quantile={pol.card_quantile}, prune_threshold={pol.prune_threshold}, "
            f"chosen by replay to reach {result.target_score:.4f} mean judge score "
            f"({result.reference['policy']} reference) at the least {result.compute_key}. "
            + claim_sentence(calibrator.config.claim)
        ),
        limitations=" ".join(result.warnings + notes) or "none noted",
        extra={
            "method_reason": method["choice"].reason,
            "split": split.source_of_split,
            "policy": pol.to_dict(),
            "claim": calibrator.config.claim,
        },
        warnings=list(warnings),
    )
    fp = split.data.fingerprint
    return export_predictors(
        out, [(section, lambda d: calibrator.save_pretrained(d, metrics=values, data_fingerprint=fp))]
    )


def track(cfg: CalibrateConfig, out: Path, metrics: dict, pngs: list[Path], export: Path) -> str | None:
    """One W&B run for the job: metrics, the plots and the export; returns the local run directory."""
    from ade_train.tracking import finish, log_export_artifact, log_images, make_logger, run_dir

    logger = make_logger(
        out / RUN_SUBDIR,
        project=cfg.project,
        name="calibrate",
        enabled=cfg.wandb,
        config=asdict(cfg),
        save_dir=out,
    )
    if logger is None:
        return None
    try:
        logger.log_metrics({f"calibration/{k}": v for k, v in numeric(metrics).items()})
        for png in pngs:  # one panel each: W&B warns on a panel of images of different sizes
            log_images(logger, f"calibration/{png.stem.removeprefix('calibration_')}", [png])
        log_export_artifact(logger, export)
        where = run_dir(logger)
    finally:
        finish(logger)
    return None if where is None else str(where)
