"""``ade-train calibrate``: calibrated confidence P(pass) and the adaptive policy's thresholds.

Fits the map from online signals (cheap scores such as clip_t / clip_i and the critique head's
p_pass) to a calibrated P(pass) on the *calibration split* of a trace dataset, with the CARD and
critique predictors already exported in ``OUT/export`` loaded through the runtime classes, so the
models and the thresholds are tuned on the same split (scikit-learn #33540). Then it replays the
adaptive policy over that split to choose tau_high, tau_low, S_max, the CARD quantile and the
pruning threshold (``calibrate.search``), writes the candidates table and plots into OUT, logs to
W&B, and merges the ``calibration`` artifact into ``OUT/export`` (``ade_train.export``).

    ade-train calibrate --data PATH --out DIR [--target-fraction 1.0] [--split auto|all] [--config YAML] [--no-wandb]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.artifacts import CARD_NAME, CRITIQUE_NAME, atomic_write_bytes
from ade_runtime.errors import InputError, TraceError
from ade_runtime.overhead import verifier_seconds
from ade_runtime.policy import Overhead, cost_unit
from ade_runtime.policy.signals import VLM_FEATURE
from ade_runtime.predictors.calibration import CRITIQUE_FEATURE, CalibrationConfig, Calibrator
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate.certified import certificate_metrics, certify_mask, run_certification
from ade_train.calibrate.config import DEFAULT_CONFIG, CalibrateConfig, load_config
from ade_train.calibrate.features import SignalTable, build_signal_table
from ade_train.calibrate.fit import (
    choose_method,
    ece,
    fit_estimator,
    sklearn_proba,
    split_by_group,
    to_tensors,
)
from ade_train.calibrate.report import build_report, export_calibration, job_metrics, track, write_json
from ade_train.calibrate.search import search_thresholds
from ade_train.export import DataInfo, data_source
from ade_train.loaders import require_dataset
from ade_train.quality import calibration_warning
from ade_train.splits import SPLITS_FILE, dataset_fingerprint, display_path, load_splits, split_ids
from ade_train.summary import report_rejects

log = logging.getLogger(__name__)
PREFIX = "calibration_"  # report files in OUT (calibration_candidates.csv, ...) and plots in OUT/plots


@dataclass
class CalibrationSplit:
    """The calibration split's records and what the data module knows about the whole dataset."""

    records: list[EditRecord]
    data: DataInfo
    source_of_split: str
    test_records: list[EditRecord] = field(default_factory=list)  # read once, for the held-out slack


def calibration_split(data: str | Path, out: Path, seed: int = 0, split: str = "auto") -> CalibrationSplit:
    """The calibration requests: the ids CARD's run wrote to ``OUT/splits.json`` when present (the same
    split the exported models were tuned around; refused when written for other data), else
    ``ade_train.splits.split_ids`` with ``seed``."""
    from ade_runtime.traces import TraceDataset

    data = Path(data)
    require_dataset(data)
    ds = TraceDataset(data, images="header")
    records = [r for r in ds if any(a.judge is not None for a in r.attempts)]
    report_rejects("calibrate", data, ds.rejects)
    if not records:
        raise TraceError(f"{data}: no judged record ({len(ds.rejects)} rejected lines); run ade-judge first")
    if split not in ("auto", "all"):
        raise InputError(f"split={split!r}: use 'auto' (the training run's calibration split) or 'all'")
    if split == "all":
        splits = {"calibration": [r.id for r in records]}
        where = f"every judged request of {data} (split: all)"
    elif (out / SPLITS_FILE).is_file():
        splits = load_splits(out, dataset_fingerprint(records))
        where = f"{out / SPLITS_FILE} (written by ade-train card)"
    else:
        splits = split_ids(records, seed=seed)
        where = f"ade_train.splits.split_ids(seed={seed}); no {SPLITS_FILE} in {out}"
    wanted = set(splits["calibration"])
    chosen = [r for r in records if r.id in wanted]
    if not chosen:
        raise InputError(
            f"{data}: the calibration split is empty ({len(records)} judged requests, split from {where}); "
            "give a dataset with more requests"
        )
    info = DataInfo(  # the dataset's fingerprint, as CARD and the critique record it for the same data
        path=display_path(data),
        fingerprint=dataset_fingerprint(records),
        source=data_source(records),
        n_records=len(records),
        n_rejected=len(ds.rejects),
        splits={k: len(v) for k, v in splits.items()},
        backbones=sorted({r.backbone for r in records}),
        categories=sorted({str(r.category) for r in records if r.category is not None}),
    )
    test_ids = set(splits.get("test", []))
    return CalibrationSplit(chosen, info, where, [r for r in records if r.id in test_ids])


def _load_predictors(export_dir: Path, use_critique: bool) -> tuple[Any, Any, list[str]]:
    """CARD and the critique from ``OUT/export`` through the runtime classes (absent -> None, noted)."""
    notes = []
    card = critique = None
    if (export_dir / f"{CARD_NAME}.json").is_file():
        from ade_runtime.predictors.card import CardPredictor

        card = CardPredictor.from_pretrained(export_dir)
    else:
        notes.append(
            f"no CARD in {export_dir}: a fixed attempt budget (default_budget) is searched instead of q"
        )
    if not use_critique:
        notes.append("use_critique is off: calibrating on the cheap scores only")
    elif (export_dir / f"{CRITIQUE_NAME}.json").is_file():
        from ade_runtime.predictors.critique import CritiquePredictor

        critique = CritiquePredictor.from_pretrained(export_dir)
    else:
        notes.append(f"no critique in {export_dir}: calibrating on the cheap scores only")
    return card, critique, notes


def _fit_head(table: SignalTable, names: Sequence[str], cfg: CalibrateConfig) -> dict[str, Any]:
    """Choose a method on held-out requests, refit it on the whole split; before/after figures."""
    X, y, groups = table.matrix(names)
    choice = choose_method(
        X,
        y,
        groups,
        methods=tuple(cfg.methods),
        held_out_fraction=cfg.held_out_fraction,
        min_isotonic_samples=cfg.min_isotonic_samples,
        C=cfg.C,
        seed=cfg.seed,
    )
    final = fit_estimator(X, y, choice.method, groups=groups, C=cfg.C, seed=cfg.seed)
    held = split_by_group(groups, cfg.held_out_fraction, salt=f"method-{cfg.seed}")
    # honest "after": the chosen method fitted without the held-out requests, scored on them
    if held.any() and (~held).any() and len(set(y[~held])) == 2:
        est = fit_estimator(X[~held], y[~held], choice.method, groups=groups[~held], C=cfg.C, seed=cfg.seed)
        p_after, y_after = sklearn_proba(est, X[held]), y[held]
    else:
        p_after, y_after = sklearn_proba(final, X), y
    p_before = table.raw_confidence(names)
    return {
        "names": list(names),
        "choice": choice,
        "tensors": to_tensors(final),
        "n": len(y),
        "before": (p_before[held] if held.any() else p_before, y[held] if held.any() else y),
        "after": (p_after, y_after),
        "ece_before": ece(
            p_before[held] if held.any() else p_before, y[held] if held.any() else y, cfg.n_bins
        ),
        "ece_after": ece(p_after, y_after, cfg.n_bins),
        "brier_after": float(
            np.mean((np.asarray(p_after, dtype=float) - np.asarray(y_after, dtype=float)) ** 2)
        ),
        "ece_in_sample": ece(sklearn_proba(final, X), y, cfg.n_bins),
    }


def _choose_map(
    primary: dict, fallback: dict | None, cheap: list[str]
) -> tuple[dict, dict | None, str | None]:
    """(exported map, its fallback, warning): the cheap-score fallback replaces a primary map that is
    worse than it on held-out requests (``ade_train.quality.calibration_warning``)."""
    if fallback is None:
        return primary, None, None
    warning = calibration_warning(
        (primary["ece_after"], primary["brier_after"]), (fallback["ece_after"], fallback["brier_after"])
    )
    return (fallback, None, warning) if warning else (primary, fallback, None)


# long function: the calibration job's steps in order (fit, search, certify, report, export)
def train(cfg: CalibrateConfig) -> dict[str, Any]:
    """Run the whole calibration job; returns the metrics (also in OUT/calibration_report.json)."""
    from ade_train.calibrate.plots import plot_compute_quality, plot_reliability

    out = Path(cfg.out)
    if not cfg.data or not cfg.out:
        raise InputError("calibrate needs --data (trace dataset) and --out (training output directory)")
    split = calibration_split(cfg.data, out, seed=cfg.seed, split=cfg.split)
    records = split.records
    export_dir = out / "export"
    card, critique, notes = _load_predictors(export_dir, cfg.use_critique)
    table = build_signal_table(records, cfg.score_names, critique)
    notes += table.notes
    # the expensive verifier's score (a VLM reward model) is not a cheap signal: it is the cascade's
    # second stage, read by the primary map only; the fallback map (cheap scores) is the first stage
    cheap = [n for n in table.score_names if n != VLM_FEATURE]
    expensive = [VLM_FEATURE] if cfg.use_verifier and VLM_FEATURE in table.score_names else []
    if VLM_FEATURE in table.score_names and not cfg.use_verifier:
        notes.append("use_verifier is off: the traces' vlm score is not a calibration input")
    primary_names = [*cheap, *([CRITIQUE_FEATURE] if critique is not None else []), *expensive]
    # split discipline: the map is fitted on the fit part; the certify part only certifies thresholds
    cert_mask = certify_mask([r.id for r in records], cfg.certify_fraction, cfg.seed)
    certify_ids = {r.id for r, m in zip(records, cert_mask, strict=True) if m}
    fit_table = table.subset({r.id for r in records} - certify_ids)
    fitted = _fit_head(fit_table, primary_names, cfg)
    # the cheap-score fallback answers when the critique is missing (no image, pruned, failed)
    cheap_fit = _fit_head(fit_table, cheap, cfg) if (critique is not None or expensive) and cheap else None
    primary, fallback, map_warning = _choose_map(fitted, cheap_fit, list(cheap))
    warnings = [map_warning] if map_warning else []
    if map_warning:  # the exported map reads no critique: its "critique missing -> fallback" note is moot
        notes = [n for n in notes if not n.startswith("critique missing")] + [
            "the critique's p_pass is not a calibration input (the cheap-score map is exported)"
        ]
    base_config = CalibrationConfig(
        feature_names=tuple(primary["names"]),
        method=primary["choice"].method,
        fallback_feature_names=tuple(cheap) if fallback else (),
        fallback_method=fallback["choice"].method if fallback else "logistic",
    )
    calibrator = Calibrator(base_config, primary["tensors"], fallback["tensors"] if fallback else None)
    used_critique = critique if map_warning is None else None
    result = _search(cfg, records, table, calibrator, card, used_critique, notes)
    decision, heldout = run_certification(
        cfg,
        result,
        certify_ids,
        split.test_records,
        calibrator,
        card,
        used_critique,
        _overhead(cfg, used_critique, records),
        list(cheap),
    )
    (warnings if decision.status != "certified" else notes).append(decision.text)
    final_config = CalibrationConfig(**{**base_config.to_dict(), "policy": result.chosen})
    calibrator = Calibrator(final_config, primary["tensors"], fallback["tensors"] if fallback else None)

    # report files in OUT, plots in OUT/plots (with CARD's)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{PREFIX}candidates.csv", result.table_csv().encode())
    write_json(out / f"{PREFIX}candidates.json", result.candidates)
    curves = {"before (raw signal)": (*fitted["before"], fitted["ece_before"])}
    curves["after (held-out)"] = (*fitted["after"], fitted["ece_after"])
    if cheap_fit:
        curves["fallback, cheap scores (held-out)"] = (*cheap_fit["after"], cheap_fit["ece_after"])
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pngs = [
        plot_reliability(curves, plots / f"{PREFIX}reliability.png", "P(pass)", cfg.n_bins),
        plot_compute_quality(
            result.candidates,
            plots / f"{PREFIX}compute_quality.png",
            target=result.target_score,
            reference=result.reference,
            compute_label=result.compute_key.replace("_", " "),
        ),
    ]
    metrics = job_metrics(primary, fallback, result, table, split)
    metrics.update(certificate_metrics(decision, heldout, len(certify_ids)))
    if map_warning:
        metrics.update(rejected_ece_after=fitted["ece_after"], rejected_brier_after=fitted["brier_after"])
    report = build_report(cfg, metrics, result, primary, fallback, list(cheap), notes, warnings)
    report["certificate"] = {**decision.to_dict(), "heldout": heldout, "by_target": result.target_curve}
    write_json(out / f"{PREFIX}report.json", report)
    export = export_calibration(
        out, calibrator, metrics, result, split, primary, notes + result.warnings, warnings
    )
    wandb_dir = track(cfg, out, metrics, pngs, export)
    return {
        **metrics,
        "export_dir": str(export),
        "wandb_run_dir": wandb_dir,
        "warnings": warnings + result.warnings,
        "notes": notes + [f"plots: {', '.join(str(p) for p in pngs)}"],
    }


def _search(cfg: CalibrateConfig, records, table: SignalTable, calibrator, card, critique, notes: list[str]):
    """The threshold search by replay over the calibration split (``calibrate.search``)."""
    unit = cost_unit(records)
    compute_key = "gpu_seconds_per_request" if unit == "seconds" else "nfe_per_request"
    if unit == "nfe" and (cfg.score_s or cfg.critique_s or cfg.preview_s):
        notes.append(
            "traces have no latency_s: compute is NFE, the modelled scoring/critique/preview seconds are not counted"
        )
    overhead = _overhead(cfg, critique, records)
    result = search_thresholds(
        records,
        table.signals(calibrator),
        base=cfg.policy_base,
        grid=cfg.search_grid,
        card=table.card_fn(card) if card is not None else None,
        overhead=overhead,
        compute_key=compute_key,
        target_fraction=cfg.target_fraction,
        reference_policy=cfg.reference_policy,
        use_prune=table.has_previews,
        min_requests=cfg.min_requests,
    )
    if not table.has_previews:
        notes.append("no preview scores in the traces: prune_threshold not searched (pruning off)")
    return result  # its warnings are printed in the summary, after certification decided which apply


def _overhead(cfg: CalibrateConfig, critique, records=()) -> Overhead:
    verify_s = cfg.verify_s if cfg.verify_s is not None else verifier_seconds(records)
    return Overhead(
        score_s=cfg.score_s,
        critique_s=cfg.critique_s if critique is not None else 0.0,
        preview_s=cfg.preview_s,
        verify_s=verify_s,
    )


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ade-train calibrate``; 0 success, 2 bad usage or input, 130 on Ctrl-C, 1 unexpected failure."""
    from ade_train.runconfig import guarded

    p = argparse.ArgumentParser(prog="ade-train calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="trace dataset directory (edit-trace v1)")
    p.add_argument("--out", required=True, help="training output dir; reads and extends OUT/export")
    p.add_argument(
        "--target-fraction", type=float, default=None, help="quality target x Best-of-8 (default 1.0)"
    )
    p.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG.name})")
    p.add_argument("--seed", type=int, default=None, help="split seed when OUT has no splits.json")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    p.add_argument(
        "--split",
        choices=("auto", "all"),
        default=None,
        help="auto: the training run's calibration split; all: every judged request of --data (a set "
        "collected for calibration, e.g. with ade-collect with --predictors OUT/export)",
    )
    g = p.add_argument_group("certification (Learn-then-Test; docs/calibration.md)")
    g.add_argument("--delta", type=float, default=None, help="certificate failure probability (default 0.1)")
    g.add_argument(
        "--risk",
        choices=("relative", "absolute"),
        default=None,
        help="relative: mean score >= target-fraction x reference (default); absolute: pass rate >= --pass-rate",
    )
    g.add_argument("--pass-rate", type=float, default=None, help="the absolute target, e.g. 0.7")
    g.add_argument("--p-value", choices=("wsr", "hb"), default=None, help="wsr (default) or hb")
    g.add_argument(
        "--certify-fraction", type=float, default=None, help="calibration requests kept to certify (0.5)"
    )
    g.add_argument(
        "--allow-uncertified",
        action="store_true",
        default=None,
        help="when nothing certifies, export the cheapest setting meeting the target on the calibration "
        "requests (flagged) instead of the conservative reference policy",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    def run() -> None:
        cfg = load_config(
            args.config,
            data=args.data,
            out=args.out,
            target_fraction=args.target_fraction,
            seed=args.seed,
            split=args.split,
            delta=args.delta,
            risk=args.risk,
            pass_rate=args.pass_rate,
            p_value=args.p_value,
            certify_fraction=args.certify_fraction,
            allow_uncertified=args.allow_uncertified,
        )
        if args.no_wandb:
            cfg.wandb = False
        _print(train(cfg))

    return guarded("calibrate", run)


def _print(metrics: dict[str, Any]) -> None:
    from ade_train.summary import print_summary

    notes = {f"WARNING {i + 1}": w for i, w in enumerate(metrics["warnings"])}
    notes.update({f"note {i + 1}": n for i, n in enumerate(metrics["notes"])})
    shown = {
        k: v for k, v in metrics.items() if k not in ("warnings", "notes", "export_dir", "wandb_run_dir")
    }
    notes["W&B run"] = metrics["wandb_run_dir"] or "none (--no-wandb)"
    print_summary("Calibration", shown, export_dir=metrics["export_dir"], notes=notes)
