"""``ade-train calibrate``: calibrated confidence P(pass) and the adaptive policy's certified thresholds.

The glue of the job: read the calibration split of a trace dataset and the CARD and critique
predictors already exported in ``OUT/export`` (through the runtime classes, so the models and the
thresholds are tuned on the same split, scikit-learn #33540), fit a ``PolicyCalibrator``
(``calibrate.controller``: the map, the threshold search by replay, the certificate), then write the
candidates table and the plots into OUT, log to W&B, and merge the ``calibration`` artifact into
``OUT/export`` (``ade_train.export``). The config goes through ``ade_train.runconfig`` like the other
jobs' (``calibrate.config``).

    ade-train calibrate --data PATH --out DIR [--target-fraction 1.0] [--split auto|all] [--config YAML]
        [--no-wandb] [--threads N] [--grid.s_max=[1,2] ...]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ade_runtime.artifacts import CARD_NAME, CRITIQUE_NAME, atomic_write_bytes
from ade_runtime.errors import InputError, TraceError
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate.config import CalibrateConfig, build_config
from ade_train.calibrate.controller import PolicyCalibrator
from ade_train.calibrate.decision import certificate_metrics
from ade_train.calibrate.report import build_report, export_calibration, job_metrics, track, write_json
from ade_train.export import DataInfo, data_source
from ade_train.loaders import require_dataset
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


def calibration_split(
    data: str | Path, out: str | Path, seed: int = 0, split: str = "auto"
) -> CalibrationSplit:
    """The calibration requests: the ids CARD's run wrote to ``OUT/splits.json`` when present (the same
    split the exported models were tuned around; refused when written for other data), else
    ``ade_train.splits.split_ids`` with ``seed``."""
    from ade_runtime.traces import TraceDataset

    data, out = Path(data), Path(out)
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


def train(cfg: CalibrateConfig) -> dict[str, Any]:
    """Run the whole calibration job; returns the metrics (also in OUT/calibration_report.json)."""
    out = Path(cfg.out)
    if not cfg.data or not cfg.out:
        raise InputError("calibrate needs --data (trace dataset) and --out (training output directory)")
    split = calibration_split(cfg.data, out, seed=cfg.seed, split=cfg.split)
    card, critique, notes = _load_predictors(out / "export", cfg.use_critique)
    cal = PolicyCalibrator(cfg).fit(
        split.records, card=card, critique=critique, test_records=split.test_records
    )
    notes += cal.notes_
    warnings = list(cal.warnings_)
    result = cal.search_
    pngs = _write_outputs(cal, out)
    metrics = job_metrics(cal.map_, cal.fallback_, result, cal.table_, split)
    metrics.update(certificate_metrics(cal.decision_, cal.heldout_, len(cal.certify_ids_)))
    if cal.map_warning_:
        fitted = cal.primary_fit_
        metrics.update(rejected_ece_after=fitted["ece_after"], rejected_brier_after=fitted["brier_after"])
    report = build_report(cfg, metrics, result, cal.map_, cal.fallback_, cal.cheap_features_, notes, warnings)
    calibration_ids = [r.id for r in split.records]
    report["certificate"] = {
        **cal.decision_.to_dict(),
        "heldout": cal.heldout_,
        "by_target": result.target_curve,
        "ids": {  # who saw what: the map and the front on "fit", the test on "certify", the slack on "test"
            "fit": sorted(i for i in calibration_ids if i not in cal.certify_ids_),
            "map_fit": sorted(cal.map_fit_ids_),
            "certify": sorted(cal.certify_ids_),
            "test": sorted(r.id for r in split.test_records),
        },
    }
    write_json(out / f"{PREFIX}report.json", report)
    export = export_calibration(
        out, cal.calibrator_, metrics, result, split, cal.map_, notes + result.warnings, warnings
    )
    wandb_dir = track(cfg, out, metrics, pngs, export)
    return {
        **metrics,
        "export_dir": str(export),
        "wandb_run_dir": wandb_dir,
        "warnings": warnings + result.warnings,
        "notes": notes + [f"plots: {', '.join(str(p) for p in pngs)}"],
    }


def _write_outputs(cal: PolicyCalibrator, out: Path) -> list[Path]:
    """The candidates table in OUT, the reliability and compute-quality plots in OUT/plots (with CARD's)."""
    from ade_train.calibrate.plots import plot_compute_quality, plot_reliability

    result, fitted, cheap_fit = cal.search_, cal.primary_fit_, cal.cheap_fit_
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{PREFIX}candidates.csv", result.table_csv().encode())
    write_json(out / f"{PREFIX}candidates.json", result.candidates)
    curves = {"before (raw signal)": (*fitted["before"], fitted["ece_before"])}
    curves["after (held-out)"] = (*fitted["after"], fitted["ece_after"])
    if cheap_fit:
        curves["fallback, cheap scores (held-out)"] = (*cheap_fit["after"], cheap_fit["ece_after"])
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    return [
        plot_reliability(curves, plots / f"{PREFIX}reliability.png", "P(pass)", cal.config.n_bins),
        plot_compute_quality(
            result.candidates,
            plots / f"{PREFIX}compute_quality.png",
            target=result.target_score,
            reference=result.reference,
            compute_label=result.compute_key.replace("_", " "),
        ),
    ]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ade-train calibrate``; 0 success, 2 bad usage or input, 130 on Ctrl-C, 1 unexpected failure."""
    from ade_train.runconfig import run_cli

    def body(cfg: dict) -> None:
        if cfg.get("plan"):
            print_plan(plan(CalibrateConfig.from_run_config(cfg)))
        else:
            _print(train(CalibrateConfig.from_run_config(cfg)))

    return run_cli("calibrate", build_config, body, argv)


def plan(cfg: CalibrateConfig) -> dict[str, Any]:
    """``--plan``: the power analysis on the fit part of the calibration split (nothing exported); also
    written to OUT/calibration_plan.json."""
    out = Path(cfg.out)
    split = calibration_split(cfg.data, out, seed=cfg.seed, split=cfg.split)
    card, critique, _ = _load_predictors(out / "export", cfg.use_critique)
    result = PolicyCalibrator(cfg).plan(split.records, card=card, critique=critique)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{PREFIX}plan.json", result)
    return {**result, "path": str(out / f"{PREFIX}plan.json")}


def print_plan(p: dict[str, Any]) -> None:
    """The plan as a table: n, P(certified), the export's expected share of the reference's compute."""
    unit = "GPU-s" if p["compute_key"].startswith("gpu") else "NFE"
    print(f"Power analysis (resampling the fit part, {p['n_fit']} requests; the certify part is not read)")
    print(f"  claim: {p['claim']}; reference: {p['reference']}; {p['front']} settings on the front")
    print(f"  {'n certify':>10} {'P(certified)':>13} {'expected ' + unit + ' share':>22}")
    for r in p["rows"]:
        share = "-" if r["expected_share"] is None else f"{r['expected_share']:.0%}"
        print(f"  {r['n']:>10} {r['power']:>13.2f} {share:>22}")
    need = p["n_for_80pct_power"]
    print(
        f"  this split certifies on {p['n_certify']} requests: power {p['power_at_n_certify']:.2f}; "
        + (f"80% power needs about {need}" if need else "no n gives 80% power (the front misses the claim)")
    )
    if "smallest_margin_at_n_certify" in p:
        eps = p["smallest_margin_at_n_certify"]
        print(
            f"  the smallest margin certified with 80% power on {p['n_certify']} requests: "
            + (f"{eps:g}" if eps is not None else "none up to 0.2")
        )
    print(f"  written to {p['path']}")


def _print(metrics: dict[str, Any]) -> None:
    from ade_train.summary import print_summary

    notes = {f"WARNING {i + 1}": w for i, w in enumerate(metrics["warnings"])}
    notes.update({f"note {i + 1}": n for i, n in enumerate(metrics["notes"])})
    shown = {
        k: v for k, v in metrics.items() if k not in ("warnings", "notes", "export_dir", "wandb_run_dir")
    }
    notes["W&B run"] = metrics["wandb_run_dir"] or "none (--no-wandb)"
    print_summary("Calibration", shown, export_dir=metrics["export_dir"], notes=notes)
