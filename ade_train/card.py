"""Train CARD (complexity-adaptive budget predictor) on any edit-trace v1 dataset and export it.

``CardModule`` wraps the runtime ``CardModel`` (ade_runtime/predictors/card.py) with the censored
NLL of ``card_metrics``; ``train(cfg) -> metrics`` is the plain function behind
``ade-train card --data PATH --out DIR``: resume from ``OUT/checkpoints/last.ckpt`` when present
(``--resume`` insists on it, Lightning #7072), re-export a finished run without retraining
(``--force`` retrains), W&B offline tracking (``ade_train.tracking``), atomic merged export
(``ade_train.export``) and the summary table. Structure after lightning-hydra-template's
``src/train.py`` + ``src/models/*_module.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ade_runtime.artifacts import CARD_NAME, atomic_write_bytes
from ade_runtime.errors import InputError
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_train import tracking
from ade_train.card_metrics import card_loss, card_metrics, censored_nll, prior_probs
from ade_train.card_report import plot_coverage
from ade_train.checkpointing import AtomicCheckpointIO, checkpoint_epoch, checkpoint_hparams
from ade_train.data import TraceDataModule
from ade_train.export import PredictorSection, export_predictors
from ade_train.runconfig import apply_common_args, dump_yaml, load_run_config, run_cli
from ade_train.summary import print_summary

RESULT_FILE = "result.json"
INTENDED_USE = (
    "Per-request attempt budget (quantile of the predicted need) and reasoning-token level for ADE's "
    "adaptive loop, on requests like the training data (same backbone, categories and encoders)."
)


class CardModule(L.LightningModule):
    """CARD training: censored NLL over budget levels + token-level CE; metrics on val/test."""

    def __init__(
        self,
        input_dim: int,
        levels: list[int],
        token_levels: list[int] | None = None,
        hidden: list[int] | None = None,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        token_weight: float = 0.5,
        quantiles: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = CardConfig(
            input_dim=input_dim,
            levels=list(levels),
            token_levels=list(token_levels or [0]),
            hidden=list(hidden or [128, 64]),
            dropout=dropout,
        )
        self.model = CardModel(self.config)
        self.quantiles = [float(q) for q in (quantiles or [0.5, 0.8, 0.9])]
        if not all(0 < q < 1 for q in self.quantiles):
            raise InputError(f"model.quantiles must lie in (0, 1), got {self.quantiles}")
        self._outputs: list[tuple[torch.Tensor, ...]] = []
        self._prior: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, TraceDataModule):
            train = dm.tensors("train")
            self._prior = prior_probs(train["level"], train["censored"], self.config.n_budget_classes, 1)[0]
            if stage == "fit":
                self.model.set_feature_stats(train["x"])
                # Start near the constant prior (output bias = log prior): the need is noisy per request,
                # so the head should learn departures from it (a resume loads the checkpoint over this).
                with torch.no_grad():
                    self.model.budget_head.bias.copy_(self._prior.clamp_min(1e-6).log())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def _loss(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, level, censor_from, censored, token = batch
        b, t = self(x)
        total, nll, tok = card_loss(b, t, level, censor_from, censored, token, self.hparams.token_weight)
        return total, nll, tok, b, t

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, nll, tok, _, _ = self._loss(batch)
        self.log_dict(
            {"train/loss": total, "train/nll": nll, "train/token_ce": tok},
            on_epoch=True,
            on_step=False,
            sync_dist=True,
        )
        return total

    def _eval_step(self, batch: Sequence[torch.Tensor], prefix: str) -> None:
        total, nll, _, b, t = self._loss(batch)
        self.log(f"{prefix}/loss", total, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        self.log(f"{prefix}/nll", nll, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        _, level, censor_from, censored, token = batch
        self._outputs.append((b.softmax(-1), t.softmax(-1), level, censor_from, censored, token))

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_metrics(self, prefix: str) -> None:
        if not self._outputs:
            return
        cols = [torch.cat(c) for c in zip(*self._outputs, strict=True)]
        self._outputs.clear()
        if self.trainer.world_size > 1:  # every rank computes the metrics of the whole split
            cols = [self.all_gather(c).flatten(0, 1) for c in cols]
        probs, tprobs, level, censor_from, censored, token = cols
        m = card_metrics(probs, tprobs, level, censored, token, self.config.levels, self.quantiles)
        if prefix == "test" and self._prior is not None:
            base = card_metrics(
                self._prior.expand_as(probs),
                tprobs,
                level,
                censored,
                token,
                self.config.levels,
                self.quantiles,
            )
            m.update(
                {f"prior_{k}": v for k, v in base.items() if k.startswith(("acc", "mae", "cov", "budget"))}
            )
            prior_logits = self._prior.clamp_min(1e-12).log().expand_as(probs)
            m["prior_nll"] = float(censored_nll(prior_logits, level, censor_from, censored).mean())
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in m.items()}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


# ---------------------------------------------------------------------------------------------------
# train(cfg)


def _export(out: Path, module: CardModule, dm: TraceDataModule, metrics: dict[str, float]) -> Path:
    predictor = CardPredictor(CardModel(module.config), dm.featurizer)
    predictor.model.load_state_dict(module.model.state_dict())
    info = dm.data_info()
    test_metrics = {k: v for k, v in metrics.items() if k.startswith("test/")}
    section = PredictorSection(
        name=CARD_NAME,
        title="CARD budget predictor",
        data=info,
        metrics=test_metrics,
        encoders={role: fp for role, fp in dm.featurizer.fingerprints.items()},
        intended_use=INTENDED_USE,
        limitations="Budgets are in attempts of the training grid; requests beyond it get the largest level.",
        extra={"levels": module.config.levels, "token_levels": module.config.token_levels, "unit": dm.unit},
    )
    return export_predictors(
        out,
        [
            (
                section,
                lambda d: predictor.save_pretrained(
                    d, data_fingerprint=info.fingerprint, metrics=test_metrics
                ),
            )
        ],
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _coverage_plot(out: Path, module: CardModule, dm: TraceDataModule, logger: Any) -> Path:
    """OUT/plots/card_coverage.png on the test split (logged to W&B as media)."""
    split = "test" if dm.split_ids["test"] else "val"
    t, train_t = dm.tensors(split), dm.tensors("train")
    module.eval()
    with torch.no_grad():
        probs = module(t["x"])[0].softmax(-1)
    path = plot_coverage(
        out / "plots" / "card_coverage.png", probs, t["level"], t["censored"], module.config.levels,
        train_t["level"], train_t["censored"],
    )  # fmt: skip
    tracking.log_images(logger, "test/coverage_curve", [path])
    return path


def train(cfg: dict[str, Any]) -> dict[str, float]:
    """Train (or resume, or re-export) CARD as ``cfg`` says; returns the final metrics.

    ``cfg``: the card.yaml layout plus ``data_path``, ``out``, ``resume`` ("auto" | "must"), ``force``.
    """
    out = Path(cfg["out"])
    result_path, ckpt_dir = out / RESULT_FILE, out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if cfg.get("force"):
        for p in (ckpt_dir, result_path, out / tracking.RUN_FILE):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if cfg.get("resume") == "must" and not last.is_file():
        raise InputError(f"--resume: no checkpoint at {last}; run without --resume to start training")
    seed = int(cfg.get("seed_everything", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    dm = TraceDataModule(cfg["data_path"], out_dir=str(out), seed=seed, **cfg["data"])
    dm.setup("fit")
    finished = result_path.is_file() and json.loads(result_path.read_text()).get("finished")
    module_args = dict(input_dim=dm.input_dim, levels=dm.levels, token_levels=dm.token_levels, **cfg["model"])
    notes: dict[str, Any] = {
        "data": f"{dm.data_info().n_records} requests ({len(dm.rejects)} rejected lines)"
    }
    if finished:
        # an already finished run: rebuild the export from its best checkpoint, no retraining
        result = json.loads(result_path.read_text())
        fingerprint = dm.data_info().fingerprint
        if result.get("data_fingerprint", fingerprint) != fingerprint:
            raise InputError(
                f"{result_path}: OUT holds a finished run on other data ({result['data_fingerprint'][:23]}...); "
                "pass --force to retrain on --data, or another --out"
            )
        best = Path(result["best_checkpoint"])
        module = CardModule.load_from_checkpoint(best, map_location="cpu", weights_only=True)
        export_dir = _export(out, module, dm, result["metrics"])
        notes["re-exported"] = f"finished run, no retraining (from {best.name}); --force retrains"
        print_summary("CARD", result["metrics"], export_dir=export_dir, notes=notes)
        return result["metrics"]
    module = CardModule(**module_args)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # the merged config of this attempt, overwritten each run
        atomic_write_bytes(out / "config.yaml", dump_yaml(cfg).encode())
    logger = tracking.make_logger(out, name="card", enabled=bool(cfg.get("logger", True)), config=cfg)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch}", monitor="val/nll", mode="min", save_top_k=1
    )
    # Lightning 2.6 writes save_last only when the best improved; a resume needs every epoch's state
    last_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint, last_ckpt, tracking.RunIdCallback(out)]
    patience = cfg.get("early_stopping_patience")
    if patience:  # stop once val/nll has not improved for `patience` epochs; the best checkpoint is kept
        callbacks.append(EarlyStopping(monitor="val/nll", mode="min", patience=int(patience)))
    trainer_args = {**cfg["trainer"], "default_root_dir": str(out)}
    trainer = L.Trainer(
        logger=logger or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **trainer_args,
    )
    ckpt_path, epoch = None, None
    if last.is_file():
        ckpt_path = str(last)
        epoch = checkpoint_epoch(last)
        saved = checkpoint_hparams(last)
        for key in ("input_dim", "levels", "token_levels"):
            if key in saved and _plain(saved[key]) != _plain(module_args[key]):
                raise InputError(
                    f"{last}: checkpoint has {key}={saved[key]} but --data gives {module_args[key]}; the data or the "
                    "encoders changed since it was written: pass --force to start over, or another --out"
                )
        notes["resumed"] = f"from {last} (epoch {epoch})"
        if trainer.is_global_zero:
            print(f"ade-train card: resuming from {last} (epoch {epoch})", flush=True)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    best = checkpoint.best_model_path or str(last)
    test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = {k: float(v) for k, v in (test[0] if test else {}).items()}
    metrics["epochs"] = int(trainer.current_epoch)
    if trainer.is_global_zero:
        export_dir = _export(out, module, dm, metrics)
        tracking.log_export_artifact(logger, export_dir)
        notes["coverage plot"] = str(_coverage_plot(out, module, dm, logger))
        payload = {"finished": True, "best_checkpoint": str(Path(best).resolve()), "metrics": metrics}
        payload["data_fingerprint"] = dm.data_info().fingerprint
        payload["resumed_from_epoch"] = epoch
        atomic_write_bytes(result_path, (json.dumps(payload, sort_keys=True, indent=2) + "\n").encode())
        tracking.finish(logger)
        print_summary("CARD", metrics, export_dir=export_dir, notes=notes)
    return metrics


# ---------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-train card",
        description="Train CARD on an edit-trace v1 dataset and export it to OUT/export.",
        epilog="Further overrides in LightningCLI style: --model.hidden=[64,32] --data.batch_size=32 "
        "--trainer.max_epochs=10 (see ade_train/configs/card.yaml).",
    )
    p.add_argument("--data", required=True, help="trace dataset directory (*.jsonl shards + images)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, W&B run, export/")
    p.add_argument("--config", help="YAML merged over ade_train/configs/card.yaml")
    p.add_argument("--seed", type=int, help="seed of the splits, init and shuffling (seed_everything)")
    p.add_argument("--max-epochs", type=int, help="shortcut for --trainer.max_epochs")
    p.add_argument("--no-wandb", action="store_true", help="no W&B logger (same as logger: false)")
    p.add_argument(
        "--resume", action="store_true", help="require OUT/checkpoints/last.ckpt and resume from it"
    )
    p.add_argument("--force", action="store_true", help="retrain from scratch even if OUT holds a run")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return p


def build_config(argv: Sequence[str]) -> dict[str, Any]:
    args, rest = _parser().parse_known_args(list(argv))
    cfg = load_run_config("card", args.config, rest)
    return apply_common_args(cfg, args)


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_cli("card", build_config, train, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(cli_main())
