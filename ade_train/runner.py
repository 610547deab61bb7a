"""The one training runner behind every Lightning job of ``ade-train`` (CARD, the critique head).

``fit_and_export(cfg, job)`` owns what every trainable predictor needs, so the jobs only bring a
LightningModule, a DataModule and a config (``TrainJob``):

- checkpoints in ``RUN/checkpoints``: ``best-{epoch}.ckpt`` on ``job.monitor`` and ``last.ckpt`` after
  every epoch (our own ``ModelCheckpoint``: Lightning 2.6 writes ``save_last`` only when the best
  improved, and a resume needs every epoch), written atomically (``AtomicCheckpointIO``);
- resume: ``RUN/checkpoints/last.ckpt`` is resumed when present; ``--resume`` insists on it
  (Lightning #7072: a missing checkpoint fails loudly), ``--force`` starts over; a checkpoint or a
  finished run of other data (data fingerprint) or other hyperparameters is refused naming the key;
- a finished run (``RUN/result.json``) is re-exported from its best checkpoint without retraining;
- W&B: one run per job, its id in ``RUN/wandb_run.json`` and in every checkpoint (a resume continues
  it), its files under ``OUT/wandb`` for every job; the summary names the run folder;
- early stopping (``early_stopping_patience``), the test on the best checkpoint, the job's quality
  report (weak-model warnings, ``ade_train.quality``), the merged export and the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from ade_runtime.artifacts import atomic_write_bytes
from ade_runtime.errors import InputError
from ade_train import quiet, tracking
from ade_train.checkpointing import AtomicCheckpointIO
from ade_train.runconfig import dump_yaml
from ade_train.summary import print_summary

RESULT_FILE = "result.json"
FINGERPRINT_KEY = "ade_data_fingerprint"

# (module, metrics, logger) -> (notes, warnings), run on rank 0 with the best weights loaded
Report = Callable[[L.LightningModule, dict[str, float], Any], tuple[dict[str, Any], list[str]]]
# (module, metrics, warnings) -> export directory
Export = Callable[[L.LightningModule, dict[str, float], list[str]], Path]


@dataclass
class TrainJob:
    """What one trainable predictor brings to the runner."""

    name: str  # command and W&B run name ("card", "critique")
    title: str  # summary title ("CARD")
    out: Path  # the top-level OUT: export/, wandb/, plots/
    run_dir: Path  # this job's checkpoints/, result.json, wandb_run.json, config.yaml
    monitor: str  # the validation metric the best checkpoint and early stopping follow (minimised)
    module_cls: type[L.LightningModule]
    module_args: dict[str, Any]  # checked against a resumed checkpoint's hyperparameters
    datamodule: L.LightningDataModule
    fingerprint: str  # the data fingerprint (ade_train.splits.dataset_fingerprint)
    export: Export
    report: Report | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class DataFingerprintCallback(Callback):
    """Stores the data fingerprint in every checkpoint, so a resume on other data is refused."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprint


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _remove(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def check_resume(last: Path, job: TrainJob) -> int:
    """The epoch of ``last``; refuses a checkpoint of other data or other hyperparameters."""
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    saved = dict(ckpt.get("hyper_parameters") or {})
    for key, value in job.module_args.items():
        if key in saved and _plain(saved[key]) != _plain(value):
            raise InputError(
                f"{last}: checkpoint has {key}={saved[key]} but this run gives {key}={value}; the data, the "
                "encoders or the config changed since it was written: pass --force to start over, or another --out"
            )
    saved_fp = ckpt.get(FINGERPRINT_KEY)
    if saved_fp is not None and saved_fp != job.fingerprint:
        raise InputError(
            f"{last}: checkpoint was trained on other data ({saved_fp[:23]}...) than --data ({job.fingerprint[:23]}...); "
            "pass --force to start over, or another --out"
        )
    return int(ckpt.get("epoch", 0))


RUN_TIME_KEYS = ("resume", "force", "print_config", "threads", "logger")  # do not change what a run learns


def run_signature(cfg: dict[str, Any]) -> str:
    """sha256 of what shapes a run: its config (less run-time knobs) and its data shards' paths, sizes
    and modification times (a stat of each shard: no record is read)."""
    data = Path(cfg["data_path"])
    h = hashlib.sha256(
        json.dumps(
            {k: v for k, v in cfg.items() if k not in RUN_TIME_KEYS}, sort_keys=True, default=str
        ).encode()
    )
    for p in sorted(q for q in data.rglob("*.jsonl*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(data)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def up_to_date(cfg: dict[str, Any], run_dir: Path, artifact: str, title: str) -> dict[str, float] | None:
    """The finished run's metrics when ``OUT/export`` already holds its ``artifact`` for the same data and
    config (``make train`` after ``make train-card`` skips CARD in seconds); None otherwise."""
    if cfg.get("force"):
        return None
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    export = Path(cfg["out"]) / "export"
    if not result.get("finished") or result.get("signature") != run_signature(cfg):
        return None
    if not all((export / f"{artifact}.{ext}").is_file() for ext in ("json", "safetensors")):
        return None
    print(
        f"ade-train {title}: up to date: {export / artifact}.* was exported from the same data and config "
        "(FORCE=1 / --force retrains)",
        flush=True,
    )
    return result["metrics"]


def _reexport(job: TrainJob, result_path: Path, signature: str | None = None) -> dict[str, float]:
    """An already finished run: rebuild the export from its best checkpoint, no retraining."""
    result = json.loads(result_path.read_text())
    if result.get("data_fingerprint", job.fingerprint) != job.fingerprint:
        raise InputError(
            f"{result_path}: OUT holds a finished run on other data ({result['data_fingerprint'][:23]}...); "
            "pass --force to retrain on --data, or another --out"
        )
    best = Path(result["best_checkpoint"])
    module = job.module_cls.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    warnings = list(result.get("warnings", []))
    export_dir = job.export(module, result["metrics"], warnings)
    if signature is not None and result.get("signature") != signature:  # the next rerun skips in seconds
        atomic_write_bytes(
            result_path,
            (json.dumps({**result, "signature": signature}, sort_keys=True, indent=2) + "\n").encode(),
        )
    notes = {**job.notes, "re-exported": f"finished run, no retraining (from {best.name}); --force retrains"}
    _print(job, result["metrics"], export_dir, notes, warnings, result.get("wandb_run_dir"))
    return result["metrics"]


def _print(job: TrainJob, metrics, export_dir, notes, warnings, wandb_dir) -> None:
    notes = dict(notes)
    notes.update({f"WARNING {i + 1}": w for i, w in enumerate(warnings)})
    notes["W&B run"] = wandb_dir or "none (--no-wandb)"
    print_summary(job.title, metrics, export_dir=export_dir, notes=notes)


def _callbacks(cfg: dict[str, Any], job: TrainJob, ckpt_dir: Path) -> tuple[ModelCheckpoint, list[Callback]]:
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch}", monitor=job.monitor, mode="min", save_top_k=1
    )
    # Lightning 2.6 writes save_last only when the best improved; a resume needs every epoch's state
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    callbacks = [best, last, tracking.RunIdCallback(job.run_dir), DataFingerprintCallback(job.fingerprint)]
    if cfg["trainer"].get("enable_model_summary", True):
        callbacks.append(quiet.ModelSummaryWithoutZeroFlops())
    patience = cfg.get("early_stopping_patience")
    if patience:  # stop once the monitor has not improved for `patience` epochs; the best checkpoint is kept
        callbacks.append(EarlyStopping(monitor=job.monitor, mode="min", patience=int(patience)))
    return best, callbacks


def setup_data(cfg: dict[str, Any], datamodule_cls: type, **kwargs: Any) -> tuple[Path, Any]:
    """(OUT, the job's DataModule after ``setup("fit")``): seeds everything from ``seed_everything``
    first, so the splits, the init and the shuffling follow the config."""
    out, seed = Path(cfg["out"]), int(cfg.get("seed_everything", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    dm = datamodule_cls(cfg["data_path"], out_dir=str(out), seed=seed, **kwargs, **cfg["data"])
    dm.setup("fit")
    return out, dm


def fit_and_export(cfg: dict[str, Any], job: TrainJob) -> dict[str, float]:
    """Train (or resume, or re-export) ``job`` as ``cfg`` says; returns the final metrics.

    ``cfg``: the job's merged config plus ``resume`` ("auto" | "must"), ``force`` and ``logger``.
    """
    run = job.run_dir
    result_path, ckpt_dir = run / RESULT_FILE, run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if cfg.get("force"):
        _remove(ckpt_dir, result_path, run / tracking.RUN_FILE)
    if cfg.get("resume") == "must" and not last.is_file():
        raise InputError(f"--resume: no checkpoint at {last}; run without --resume to start training")
    if result_path.is_file() and json.loads(result_path.read_text()).get("finished"):
        return _reexport(job, result_path, run_signature(cfg))
    quiet.install()
    module = job.module_cls(**job.module_args)
    run.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # the merged config of this attempt, overwritten each run
        atomic_write_bytes(run / "config.yaml", dump_yaml(cfg).encode())
    logger = tracking.make_logger(
        run, name=job.name, enabled=bool(cfg.get("logger", True)), config=cfg, save_dir=job.out
    )
    best_ckpt, callbacks = _callbacks(cfg, job, ckpt_dir)
    trainer = L.Trainer(
        logger=logger or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **{**cfg["trainer"], "default_root_dir": str(run)},
    )
    notes = dict(job.notes)
    ckpt_path, epoch = None, None
    if last.is_file():
        ckpt_path, epoch = str(last), check_resume(last, job)
        notes["resumed"] = f"from {last} (epoch {epoch})"
        if trainer.is_global_zero:
            print(f"ade-train {job.name}: resuming from {last} (epoch {epoch})", flush=True)
    trainer.fit(module, datamodule=job.datamodule, ckpt_path=ckpt_path)
    best = best_ckpt.best_model_path or str(last)
    test = trainer.test(module, datamodule=job.datamodule, ckpt_path=best, weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in (test[0] if test else {}).items()}
    metrics["epochs"] = int(trainer.current_epoch)
    if trainer.is_global_zero:
        warnings: list[str] = []
        if job.report is not None:
            extra_notes, warnings = job.report(module, metrics, logger)
            notes.update(extra_notes)
        export_dir = job.export(module, metrics, warnings)
        tracking.log_export_artifact(logger, export_dir)
        wandb_dir = tracking.run_dir(logger)
        payload = {
            "finished": True,
            "best_checkpoint": str(Path(best).resolve()),
            "metrics": metrics,
            "warnings": warnings,
            "data_fingerprint": job.fingerprint,
            "signature": run_signature(cfg),
            "resumed_from_epoch": epoch,
            "wandb_run_dir": None if wandb_dir is None else str(wandb_dir),
        }
        atomic_write_bytes(result_path, (json.dumps(payload, sort_keys=True, indent=2) + "\n").encode())
        tracking.finish(logger)
        _print(job, metrics, export_dir, notes, warnings, payload["wandb_run_dir"])
    return metrics
