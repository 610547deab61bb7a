"""``ade-train calibrate``: calibrated confidence P(pass) and the adaptive policy's thresholds.

Fits the map from online signals (cheap scores such as clip_t / clip_i and the critique head's
p_pass) to a calibrated P(pass) on the *calibration split* of a trace dataset, with the CARD and
critique predictors already exported in ``OUT/export`` loaded through the runtime classes, so the
models and the thresholds are tuned on the same split (scikit-learn #33540). Then it replays the
adaptive policy over that split to choose tau_high, tau_low, S_max, the CARD quantile and the
pruning threshold (``calibrate_search``), writes the candidates table and plots into OUT, logs to
W&B, and merges the ``calibration`` artifact into ``OUT/export`` (``ade_train.export``).

    ade-train calibrate --data PATH --out DIR [--target-fraction 1.0] [--split auto|all] [--config YAML] [--no-wandb]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ade_runtime.artifacts import (
    CALIBRATION_NAME,
    CARD_NAME,
    CRITIQUE_NAME,
    atomic_write_bytes,
    fingerprint_records,
)
from ade_runtime.errors import ADEError, InputError, TraceError
from ade_runtime.policy import Overhead, PolicyConfig, cost_unit
from ade_runtime.predictors.calibration import CRITIQUE_FEATURE, METHODS, CalibrationConfig, Calibrator
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate_features import SignalTable, build_signal_table
from ade_train.calibrate_fit import (
    choose_method,
    ece,
    fit_estimator,
    sklearn_proba,
    split_by_group,
    to_tensors,
)
from ade_train.calibrate_search import SearchGrid, SearchResult, search_thresholds
from ade_train.export import DataInfo, PredictorSection, data_source, export_predictors

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "calibrate.yaml"
PREFIX = "calibration_"  # report files in OUT: calibration_candidates.csv, calibration_reliability.png, ...


@dataclass
class CalibrateConfig:
    """One calibration job (mirrors ``configs/calibrate.yaml``)."""

    data: str = ""  # trace dataset directory (the same one CARD and the critique were trained on)
    out: str = ""  # training output directory; predictors are read from and exported to OUT/export
    target_fraction: float = 1.0  # chosen policy's mean judge score >= this x the reference's
    reference_policy: str = "best_of_8"  # the baseline the quality target is taken from
    seed: int = 0  # salt of the request-id splits inside the calibration split
    split: str = "auto"  # auto: OUT/splits.json or split_ids; all: every judged request of data (a set
    # collected for calibration alone, e.g. ade-collect with this export's critique writing the refinements)
    score_names: list[str] | None = None  # cheap signals; None = those every judged attempt has
    use_critique: bool = True  # use the exported critique's p_pass when OUT/export has one
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # methods compared on held-out data
    held_out_fraction: float = 0.3  # requests held out to choose the method
    min_isotonic_samples: int = 1000  # isotonic maps need at least this many fitting attempts
    C: float = 1.0  # inverse L2 strength of the logistic regression
    n_bins: int = 10  # bins of the ECE and the reliability diagrams
    min_requests: int = 100  # warn below this many calibration requests (finite-sample margin)
    score_s: float = 0.0  # modelled GPU-seconds to compute the cheap scores of one attempt
    critique_s: float = 0.0  # modelled GPU-seconds of one critique call (charged when it is used)
    preview_s: float = 0.0  # modelled GPU-seconds of decoding and scoring one preview
    grid: dict[str, list] = field(default_factory=dict)  # overrides of SearchGrid's value lists
    base_policy: dict[str, Any] = field(default_factory=dict)  # PolicyConfig fields not searched
    wandb: bool = True  # log to W&B (offline unless WANDB_MODE says otherwise)
    project: str = "ade"  # W&B project

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fraction <= 1.5:
            raise InputError(f"target_fraction={self.target_fraction}: use a fraction such as 1.0 or 0.98")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise InputError(f"methods {self.methods}: choose a non-empty subset of {list(METHODS)}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise InputError(f"held_out_fraction={self.held_out_fraction}: use a value in (0, 1), e.g. 0.3")
        for name in ("score_s", "critique_s", "preview_s", "C"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)} must be >= 0")
        unknown = set(self.grid) - {f.name for f in fields(SearchGrid)}
        if unknown:
            raise InputError(
                f"grid: unknown keys {sorted(unknown)}; use {[f.name for f in fields(SearchGrid)]}"
            )
        self.search_grid = SearchGrid(**self.grid)
        try:
            self.policy_base = PolicyConfig.from_dict(self.base_policy)
        except (TypeError, ValueError) as exc:
            raise InputError(f"base_policy: {exc}") from None


def load_config(path: str | Path | None, **overrides: Any) -> CalibrateConfig:
    """Read a YAML config (``configs/calibrate.yaml`` when None) and apply command-line overrides."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(f"{path}: config file not found; pass --config with an existing YAML file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of CalibrateConfig fields, got {type(data).__name__}")
    known = {f.name for f in fields(CalibrateConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; valid keys are {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return CalibrateConfig(**data)


@dataclass
class CalibrationSplit:
    """The calibration split's records and what the data module knows about the whole dataset."""

    records: list[EditRecord]
    data: DataInfo
    source_of_split: str


def calibration_split(data: str | Path, out: Path, seed: int = 0, split: str = "auto") -> CalibrationSplit:
    """The calibration requests: the ids CARD's run wrote to ``OUT/splits.json`` when present (the same
    split the exported models were tuned around), else ``ade_train.data.split_ids`` with ``seed``."""
    from ade_runtime.traces import TraceDataset
    from ade_train.data import SPLITS_FILE, load_splits, split_ids

    data = Path(data)
    if not data.is_dir():
        raise TraceError(f"trace dataset {data} is not a directory; pass --data DIR of *.jsonl shards")
    ds = TraceDataset(data, images="header")
    records = [r for r in ds if any(a.judge is not None for a in r.attempts)]
    if not records:
        raise TraceError(f"{data}: no judged record ({len(ds.rejects)} rejected lines); run ade-judge first")
    if split not in ("auto", "all"):
        raise InputError(f"split={split!r}: use 'auto' (the training run's calibration split) or 'all'")
    if split == "all":
        splits = {"calibration": [r.id for r in records]}
        where = f"every judged request of {data} (split: all)"
    elif (out / SPLITS_FILE).is_file():
        splits = load_splits(out)
        where = f"{out / SPLITS_FILE} (written by ade-train card)"
    else:
        splits = split_ids(records, seed=seed)
        where = f"ade_train.data.split_ids(seed={seed}); no {SPLITS_FILE} in {out}"
    wanted = set(splits["calibration"])
    chosen = [r for r in records if r.id in wanted]
    if not chosen:
        raise InputError(
            f"{data}: the calibration split is empty ({len(records)} judged requests, split from {where}); "
            "give a dataset with more requests"
        )
    info = DataInfo(
        path=str(data),
        fingerprint=fingerprint_records(r.id for r in chosen),
        source=data_source(records),
        n_records=len(records),
        n_rejected=len(ds.rejects),
        splits={k: len(v) for k, v in splits.items()},
        backbones=sorted({r.backbone for r in records}),
        categories=sorted({str(r.category) for r in records if r.category is not None}),
    )
    return CalibrationSplit(chosen, info, where)


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
        "ece_in_sample": ece(sklearn_proba(final, X), y, cfg.n_bins),
    }


def train(cfg: CalibrateConfig) -> dict[str, Any]:
    """Run the whole calibration job; returns the metrics (also in OUT/calibration_report.json)."""
    from ade_train.calibrate_plots import plot_compute_quality, plot_reliability

    out = Path(cfg.out)
    if not cfg.data or not cfg.out:
        raise InputError("calibrate needs --data (trace dataset) and --out (training output directory)")
    split = calibration_split(cfg.data, out, seed=cfg.seed, split=cfg.split)
    records = split.records
    export_dir = out / "export"
    card, critique, notes = _load_predictors(export_dir, cfg.use_critique)
    table = build_signal_table(records, cfg.score_names, critique)
    notes += table.notes
    cheap = table.score_names
    primary_names = [*cheap, CRITIQUE_FEATURE] if critique is not None else list(cheap)
    primary = _fit_head(table, primary_names, cfg)
    # the cheap-score fallback answers when the critique is missing (no image, pruned, failed)
    fallback = _fit_head(table, cheap, cfg) if critique is not None and cheap else None
    base_config = CalibrationConfig(
        feature_names=tuple(primary_names),
        method=primary["choice"].method,
        fallback_feature_names=tuple(cheap) if fallback else (),
        fallback_method=fallback["choice"].method if fallback else "logistic",
    )
    calibrator = Calibrator(base_config, primary["tensors"], fallback["tensors"] if fallback else None)

    unit = cost_unit(records)
    compute_key = "gpu_seconds_per_request" if unit == "seconds" else "nfe_per_request"
    if unit == "nfe" and (cfg.score_s or cfg.critique_s or cfg.preview_s):
        notes.append(
            "traces have no latency_s: compute is NFE, the modelled scoring/critique/preview seconds are not counted"
        )
    overhead = Overhead(
        score_s=cfg.score_s,
        critique_s=cfg.critique_s if critique is not None else 0.0,
        preview_s=cfg.preview_s,
    )
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
    for w in result.warnings:
        log.warning(w)
    final_config = CalibrationConfig(**{**base_config.to_dict(), "policy": result.chosen})
    calibrator = Calibrator(final_config, primary["tensors"], fallback["tensors"] if fallback else None)

    # report files
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{PREFIX}candidates.csv", result.table_csv().encode())
    _write_json(out / f"{PREFIX}candidates.json", result.candidates)
    curves = {"before (raw signal)": (*primary["before"], primary["ece_before"])}
    curves["after (held-out)"] = (*primary["after"], primary["ece_after"])
    if fallback:
        curves["fallback, cheap scores (held-out)"] = (*fallback["after"], fallback["ece_after"])
    pngs = [
        plot_reliability(curves, out / f"{PREFIX}reliability.png", "P(pass)", cfg.n_bins),
        plot_compute_quality(
            result.candidates,
            out / f"{PREFIX}compute_quality.png",
            target=result.target_score,
            reference=result.reference,
            compute_label=compute_key.replace("_", " "),
        ),
    ]
    metrics = _metrics(primary, fallback, result, table, split)
    report = {
        "metrics": metrics,
        "chosen_policy": result.chosen.to_dict(),
        "feasible": result.feasible,
        "reference": result.reference,
        "target_score": result.target_score,
        "guarantee": result.guarantee,
        "warnings": result.warnings,
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
        "features": {"primary": primary_names, "fallback": list(cheap) if fallback else []},
        "config": {k: v for k, v in asdict(cfg).items()},
    }
    _write_json(out / f"{PREFIX}report.json", report)
    export = _export(out, calibrator, metrics, result, split, primary, notes)
    wandb_dir = _track(cfg, out, metrics, pngs, export)
    return {
        **metrics,
        "export_dir": str(export),
        "wandb_run_dir": wandb_dir,
        "warnings": result.warnings,
        "notes": notes,
    }


def _metrics(
    primary: dict, fallback: dict | None, result: SearchResult, table: SignalTable, split
) -> dict[str, Any]:
    chosen = next(r for r in result.candidates if r["chosen"])
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


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and v is not None and np.isfinite(float(v))
    }


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, sort_keys=True, indent=2, default=_json_default, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def _export(out: Path, calibrator: Calibrator, metrics, result: SearchResult, split, primary, notes) -> Path:
    numeric = _numeric(metrics)
    pol = result.chosen
    section = PredictorSection(
        name=CALIBRATION_NAME,
        title="Calibrated confidence P(pass) and adaptive-policy thresholds",
        data=split.data,
        metrics=numeric,
        intended_use=(
            f"Calibrator.from_pretrained(dir).predict_proba(signals) -> P(pass) from {calibrator.feature_names} "
            f"({primary['choice'].method}); .policy holds tau_high={pol.tau_high}, tau_low={pol.tau_low}, "
            f"s_max={pol.s_max}, card_quantile={pol.card_quantile}, prune_threshold={pol.prune_threshold}, "
            f"chosen by replay to reach {result.target_score:.4f} mean judge score "
            f"({result.reference['policy']} reference) at the least {result.compute_key}."
        ),
        limitations=" ".join(result.warnings + notes) or "none noted",
        extra={
            "method_reason": primary["choice"].reason,
            "split": split.source_of_split,
            "policy": pol.to_dict(),
        },
    )
    fp = split.data.fingerprint
    return export_predictors(
        out, [(section, lambda d: calibrator.save_pretrained(d, metrics=numeric, data_fingerprint=fp))]
    )


def _track(cfg: CalibrateConfig, out: Path, metrics: dict, pngs: list[Path], export: Path) -> str | None:
    """One W&B run for the job: metrics, the plots and the export; returns the local run directory."""
    from ade_train.tracking import finish, log_export_artifact, log_images, make_logger, run_dir

    logger = make_logger(out, project=cfg.project, name="calibrate", enabled=cfg.wandb, config=asdict(cfg))
    if logger is None:
        return None
    try:
        logger.log_metrics({f"calibration/{k}": v for k, v in _numeric(metrics).items()})
        log_images(logger, "calibration/plots", pngs)
        log_export_artifact(logger, export)
        where = run_dir(logger)
    finally:
        finish(logger)
    return None if where is None else str(where)


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ade-train calibrate``; 0 success, 2 bad usage or input, 1 unexpected failure."""
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
        "collected for calibration, e.g. with ade-collect --predictors OUT/export)",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_config(
            args.config,
            data=args.data,
            out=args.out,
            target_fraction=args.target_fraction,
            seed=args.seed,
            split=args.split,
        )
        if args.no_wandb:
            cfg.wandb = False
        metrics = train(cfg)
    except (ADEError, ValueError, FileNotFoundError) as exc:
        print(f"ade-train calibrate: {exc}", file=sys.stderr)
        return 2
    from ade_train.summary import print_summary

    notes = {f"warning {i + 1}": w for i, w in enumerate(metrics["warnings"])}
    notes.update({f"note {i + 1}": n for i, n in enumerate(metrics["notes"])})
    shown = {
        k: v for k, v in metrics.items() if k not in ("warnings", "notes", "export_dir", "wandb_run_dir")
    }
    if metrics["wandb_run_dir"]:
        notes["W&B run"] = metrics["wandb_run_dir"]
    print_summary("Calibration", shown, export_dir=metrics["export_dir"], notes=notes)
    return 0
