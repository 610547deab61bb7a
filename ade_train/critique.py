"""Train the DINOv2 critique head (``ade-train critique``) and export it next to CARD.

The head (``ade_runtime.predictors.critique.CritiqueHead``) distils the offline judge: a binary
cross-entropy on the judge's pass label plus a per-patch cross-entropy on the flaw kinds of the
judge's boxes ("none" down-weighted, most patches are clean). Encoder modes:

- ``frozen``: any DINOv2 by hub id or local path; patch tokens are computed once and cached
  (``FeatureCache``) and only the head trains. The default for real checkpoints.
- ``finetune_last_n``: the last N transformer layers (and the final norm) train with the head.
- ``scratch_tiny``: a tiny ``Dinov2Model`` built from a config and trained end to end; the default
  on the synthetic testbed, since no real vision encoder can be downloaded there.

Metrics (val/test): AUROC of p_pass, pointing accuracy (the flaw map's argmax lies in a true flaw
box, over failed attempts with boxes) against its chance level, IoU of the top predicted region
with the best-matching true box. Follows the Lightning recipe of ``ade_train/card.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from ade_runtime.artifacts import CRITIQUE_NAME, atomic_write_bytes
from ade_runtime.errors import InputError
from ade_runtime.predictors.critique import CritiqueConfig, CritiqueHead, CritiquePredictor, flaw_regions
from ade_train import tracking
from ade_train.checkpointing import AtomicCheckpointIO, checkpoint_epoch
from ade_train.critique_data import CritiqueDataModule, box_iou
from ade_train.export import PredictorSection, export_predictors
from ade_train.runconfig import apply_common_args, load_run_config, run_cli
from ade_train.summary import print_summary

ENCODER_MODES = ("frozen", "finetune_last_n", "scratch_tiny")
RUN_SUBDIR = "critique"  # OUT/critique holds this job's checkpoints, W&B run and result (CARD uses OUT)
RESULT_FILE = "result.json"
INTENDED_USE = (
    "Cheap stand-in for the offline judge inside ADE's loop: P(pass) of an attempt, a patch-level flaw "
    "map, refinement feedback naming the flaw region, and a mask confining the next round."
)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN when one class is absent."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def patch_tokens(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch tokens of a transformers Dinov2Model (CLS and register tokens dropped), differentiable."""
    hidden = model(pixel_values=pixels).last_hidden_state
    skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    return hidden[:, skip:]


class CritiqueModule(L.LightningModule):
    """The critique head (+ the image encoder when it trains) as a LightningModule."""

    def __init__(
        self,
        head: dict[str, Any],
        encoder_mode: str = "frozen",
        finetune_last_n: int = 1,
        lr: float = 2e-3,
        encoder_lr: float = 5e-4,
        weight_decay: float = 1e-4,
        flaw_weight: float = 1.0,
        none_weight: float = 0.2,
    ) -> None:
        super().__init__()
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"model.encoder_mode={encoder_mode!r}: use one of {ENCODER_MODES}")
        if lr <= 0 or encoder_lr <= 0 or flaw_weight < 0 or not 0 < none_weight <= 1:
            raise ValueError("model: lr and encoder_lr must be > 0, flaw_weight >= 0, none_weight in (0, 1]")
        self.save_hyperparameters()
        self.config = CritiqueConfig.from_dict(dict(head))
        self.head = CritiqueHead(self.config)
        self.encoder: nn.Module | None = None
        if encoder_mode != "frozen":
            self.encoder = self._build_encoder().model
            self._set_trainable(finetune_last_n)
        weights = torch.ones(len(self.config.kinds) + 1)
        weights[0] = none_weight
        self.register_buffer("class_weights", weights, persistent=False)
        self._outputs: dict[str, list] = {}

    def _build_encoder(self) -> Any:
        from ade_runtime.encoders import build_image_encoder

        return build_image_encoder(self.config.image_encoder)

    def _set_trainable(self, last_n: int) -> None:
        if self.hparams.encoder_mode == "scratch_tiny":
            self.encoder.train().requires_grad_(True)
            return
        layers = self.encoder.encoder.layer
        if not 1 <= last_n <= len(layers):
            raise ValueError(
                f"model.finetune_last_n={last_n}: must lie in [1, {len(layers)}] for this encoder"
            )
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for module in list(layers[-last_n:]) + [self.encoder.layernorm]:
            for p in module.parameters():
                p.requires_grad_(True)

    def tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(attempt tokens, source tokens): cached for a frozen encoder, computed when it trains."""
        if self.encoder is None:
            return batch["attempt"], batch["source"]
        n = batch["attempt"].shape[0]
        both = patch_tokens(self.encoder, torch.cat([batch["attempt"], batch["source"]]).float())
        return both[:n], both[n:]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        attempt, source = self.tokens(batch)
        return self.head(attempt.float(), source.float(), batch["text"].float())

    def _loss(
        self, batch: dict[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pass_logit, flaw_logits = self(batch)
        pass_loss = F.binary_cross_entropy_with_logits(pass_logit, batch["passed"].float())
        flaw_loss = F.cross_entropy(
            flaw_logits.flatten(0, 1), batch["target"].flatten(), weight=self.class_weights
        )
        loss = pass_loss + self.hparams.flaw_weight * flaw_loss
        bs = pass_logit.shape[0]
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/pass_loss": pass_loss, f"{stage}/flaw_loss": flaw_loss},
            prog_bar=stage == "train",
            on_step=stage == "train",
            on_epoch=True,
            batch_size=bs,
        )
        return loss, pass_logit, flaw_logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")[0]

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        _, pass_logit, flaw_logits = self._loss(batch, stage)
        out = self._outputs.setdefault(stage, [])
        out.append(
            {
                "p_pass": torch.sigmoid(pass_logit).cpu(),
                "passed": batch["passed"].cpu(),
                "probs": torch.softmax(flaw_logits, -1)[..., 1:].cpu(),
                "cover": batch["cover"].cpu(),
                "boxes": batch["boxes"].cpu(),
            }
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        outs = self._outputs.pop(stage, [])
        if not outs:
            return
        cat = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        metrics = critique_metrics(cat, self.config)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.head.parameters()), "lr": self.hparams.lr}]
        if self.encoder is not None:
            trainable = [p for p in self.encoder.parameters() if p.requires_grad]
            groups.append({"params": trainable, "lr": self.hparams.encoder_lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)


def critique_metrics(cat: dict[str, torch.Tensor], config: CritiqueConfig) -> dict[str, float]:
    """AUROC, pass accuracy, pointing accuracy (+ its chance level) and region IoU over a split."""
    p_pass, passed = cat["p_pass"].numpy(), cat["passed"].numpy().astype(bool)
    anyflaw = cat["probs"].sum(-1)  # [N, P]
    cover = cat["cover"]
    has_box = cover.any(1) & ~cat["passed"].bool()
    out = {
        "auroc": auroc(p_pass, passed),
        "pass_acc": float(((p_pass >= config.pass_threshold) == passed).mean()),
        "pointing": float("nan"),
        "pointing_chance": float("nan"),
        "iou": float("nan"),
    }
    idx = torch.nonzero(has_box).flatten()
    if len(idx):
        hit = cover[idx, anyflaw[idx].argmax(1)]
        out["pointing"] = float(hit.float().mean())
        out["pointing_chance"] = float(cover[idx].float().mean())
        rows, cols = config.grid
        ious = []
        for i in idx.tolist():
            fmap = cat["probs"][i].T.reshape(len(config.kinds), rows, cols).numpy()
            found = flaw_regions(fmap, config.kinds, config.mask_threshold, 1, force=True)
            boxes = [b for b in cat["boxes"][i].tolist() if b[0] >= 0]
            ious.append(max(box_iou(found[0][0].box, b) for b in boxes) if found and boxes else 0.0)
        out["iou"] = float(np.mean(ious))
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# train(cfg)


def build_predictor(module: CritiqueModule, dm: CritiqueDataModule) -> CritiquePredictor:
    """The runtime predictor of a trained module: its head, its (trained or frozen) encoder."""
    head = CritiqueHead(module.config)
    head.load_state_dict(module.head.state_dict())
    image_encoder = dm.image_encoder
    if module.encoder is not None:  # a fresh encoder object carrying the trained weights
        image_encoder = module._build_encoder()
        image_encoder.model.load_state_dict(module.encoder.state_dict())
    return CritiquePredictor(head, image_encoder, dm.text_encoder)


def _export(out: Path, module: CritiqueModule, dm: CritiqueDataModule, metrics: dict[str, float]) -> Path:
    predictor = build_predictor(module, dm)
    info = dm.data_info()
    test_metrics = {k: v for k, v in metrics.items() if k.startswith("test/")}
    mode = module.hparams.encoder_mode
    image = dm.image_encoder.fingerprint if mode == "frozen" else f"{mode} (weights in critique.safetensors)"
    section = PredictorSection(
        name=CRITIQUE_NAME,
        title="DINOv2 critique head",
        data=info,
        metrics=test_metrics,
        encoders={"image": image, "text": dm.text_encoder.fingerprint},
        intended_use=INTENDED_USE,
        limitations="Flaw kinds are those of the training judge; boxes are on the encoder's patch grid.",
        extra={
            "kinds": list(module.config.kinds),
            "grid": list(module.config.grid),
            "encoder_mode": mode,
            "skipped_attempts": dict(dm.skipped),
        },  # fmt: skip
    )
    write = lambda d: predictor.save_pretrained(d, data_fingerprint=info.fingerprint, metrics=test_metrics)  # noqa: E731
    return export_predictors(out, [(section, write)])


def _module_args(cfg: dict[str, Any], dm: CritiqueDataModule) -> dict[str, Any]:
    model = dict(cfg["model"])
    head = dict(model.pop("head", {}) or {})
    head.update(
        kinds=list(dm.kinds),
        token_dim=dm.token_dim,
        text_dim=dm.text_dim,
        grid=list(dm.grid),
        image_encoder=dm.image_encoder.spec(),
        text_encoder=dm.text_encoder.spec(),
        encoder_trained=model.get("encoder_mode", "frozen") != "frozen",
    )
    return {"head": head, **model}


def train(cfg: dict[str, Any]) -> dict[str, float]:
    """Train (or resume, or re-export) the critique head as ``cfg`` says; returns the final metrics.

    ``cfg``: the critique.yaml layout plus ``data_path``, ``out``, ``resume`` ("auto" | "must"), ``force``.
    """
    out = Path(cfg["out"])
    run = out / RUN_SUBDIR
    result_path, ckpt_dir = run / RESULT_FILE, run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if cfg.get("force"):
        for p in (ckpt_dir, result_path, run / tracking.RUN_FILE):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if cfg.get("resume") == "must" and not last.is_file():
        raise InputError(f"--resume: no checkpoint at {last}; run without --resume to start training")
    seed = int(cfg.get("seed_everything", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    mode = cfg["model"].get("encoder_mode", "frozen")
    dm = CritiqueDataModule(cfg["data_path"], out_dir=str(out), seed=seed, encoder_mode=mode, **cfg["data"])
    dm.setup("fit")
    notes: dict[str, Any] = {
        "data": f"{sum(len(v) for v in dm.examples.values())} judged attempts "
        f"(skipped {dict(dm.skipped) or 'none'}; {len(dm.rejects)} rejected lines)",
        "head": f"kinds {list(dm.kinds)}, grid {dm.grid[0]}x{dm.grid[1]}, encoder {mode}",
    }
    if result_path.is_file() and json.loads(result_path.read_text()).get("finished"):
        # an already finished run: rebuild the export from its best checkpoint, no retraining
        result = json.loads(result_path.read_text())
        module = CritiqueModule.load_from_checkpoint(
            result["best_checkpoint"], map_location="cpu", weights_only=True
        )
        export_dir = _export(out, module, dm, result["metrics"])
        notes["re-exported"] = "finished run, no retraining; --force retrains"
        print_summary("critique", result["metrics"], export_dir=export_dir, notes=notes)
        return result["metrics"]
    module = CritiqueModule(**_module_args(cfg, dm))
    logger = tracking.make_logger(run, name="critique", enabled=bool(cfg.get("logger", True)), config=cfg)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch}",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    trainer = L.Trainer(
        logger=logger or False,
        callbacks=[checkpoint, tracking.RunIdCallback(run)],
        plugins=[AtomicCheckpointIO()],
        **{**cfg["trainer"], "default_root_dir": str(run)},
    )
    ckpt_path = None
    if last.is_file():
        ckpt_path = str(last)
        notes["resumed"] = f"from {last} (epoch {checkpoint_epoch(last)})"
        if trainer.is_global_zero:
            print(f"ade-train critique: resuming from {last} (epoch {checkpoint_epoch(last)})", flush=True)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    best = checkpoint.best_model_path or str(last)
    test = trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in (test[0] if test else {}).items()}
    metrics["epochs"] = float(trainer.current_epoch)
    if trainer.is_global_zero:
        export_dir = _export(out, module, dm, metrics)
        tracking.log_export_artifact(logger, export_dir)
        payload = {"finished": True, "best_checkpoint": str(Path(best).resolve()), "metrics": metrics}
        atomic_write_bytes(result_path, (json.dumps(payload, sort_keys=True, indent=2) + "\n").encode())
        tracking.finish(logger)
        print_summary("critique", metrics, export_dir=export_dir, notes=notes)
    return metrics


# ---------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ade-train critique",
        description="Train the DINOv2 critique head on an edit-trace v1 dataset and export it to OUT/export.",
        epilog="Further overrides in LightningCLI style: --model.lr=0.001 --data.max_train_attempts=500 "
        "--trainer.max_epochs=3 (see ade_train/configs/critique.yaml).",
    )
    p.add_argument("--data", required=True, help="trace dataset directory (*.jsonl shards + images)")
    p.add_argument("--out", required=True, help="run directory shared with CARD; export goes to OUT/export")
    p.add_argument("--config", help="YAML merged over ade_train/configs/critique.yaml")
    p.add_argument(
        "--encoder",
        help="'scratch_tiny' (tiny DINOv2 trained end to end, the testbed default) or a DINOv2 hub id / "
        "local path, used frozen (add --finetune-last-n N to train its last N layers)",
    )
    p.add_argument("--finetune-last-n", type=int, help="train the last N layers of the --encoder checkpoint")
    p.add_argument("--image-size", type=int, default=224, help="input side for a --encoder checkpoint")
    p.add_argument("--seed", type=int, help="seed of the splits, init and shuffling (seed_everything)")
    p.add_argument("--max-epochs", type=int, help="shortcut for --trainer.max_epochs")
    p.add_argument("--no-wandb", action="store_true", help="no W&B logger (same as logger: false)")
    p.add_argument("--resume", action="store_true", help="require OUT/critique/checkpoints/last.ckpt")
    p.add_argument("--force", action="store_true", help="retrain from scratch even if OUT holds a run")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return p


def build_config(argv: Sequence[str]) -> dict[str, Any]:
    args, rest = _parser().parse_known_args(list(argv))
    cfg = load_run_config("critique", args.config, rest)
    if args.encoder and args.encoder != "scratch_tiny":
        cfg["data"]["image_encoder"] = {
            "kind": "dinov2",
            "model": args.encoder,
            "image_size": args.image_size,
        }
        cfg["model"]["encoder_mode"] = "frozen"
    elif args.encoder == "scratch_tiny":
        cfg["model"]["encoder_mode"] = "scratch_tiny"
    if args.finetune_last_n is not None:
        if cfg["model"]["encoder_mode"] == "scratch_tiny":
            raise InputError("--finetune-last-n needs a pretrained --encoder (id or path), not scratch_tiny")
        cfg["model"].update(encoder_mode="finetune_last_n", finetune_last_n=args.finetune_last_n)
    return apply_common_args(cfg, args)


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_cli("critique", build_config, train, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(cli_main())
