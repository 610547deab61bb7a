"""CritiqueModule: the DINOv2 critique head (+ its encoder when it trains) as a LightningModule.

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
with the best-matching true box. Trained by ``ade_train.critique.job`` through ``ade_train.runner``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ade_runtime.predictors.critique import CritiqueConfig, CritiqueHead
from ade_runtime.predictors.regions import box_iou, flaw_regions
from ade_runtime.stats import auroc

ENCODER_MODES = ("frozen", "finetune_last_n", "scratch_tiny")


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
        score_dropout: float = 0.3,
        rank_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"model.encoder_mode={encoder_mode!r}: use one of {ENCODER_MODES}")
        if lr <= 0 or encoder_lr <= 0 or flaw_weight < 0 or not 0 < none_weight <= 1:
            raise ValueError("model: lr and encoder_lr must be > 0, flaw_weight >= 0, none_weight in (0, 1]")
        if rank_weight < 0:
            raise ValueError(f"model.rank_weight={rank_weight!r}: must be >= 0")
        if not 0 <= score_dropout < 1:
            raise ValueError(f"model.score_dropout={score_dropout!r}: must lie in [0, 1)")
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
        self.last_outputs: dict[str, dict[str, torch.Tensor]] = {}

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

    def forward(
        self, batch: dict[str, torch.Tensor], drop_scores: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attempt, source = self.tokens(batch)
        scores = batch.get("scores")
        if scores is not None and drop_scores:
            scores = torch.full_like(scores, float("nan"))
        elif scores is not None and self.training and self.hparams.score_dropout > 0:
            # trained with scores withheld at random, the head also works when the caller has none
            scores = scores.masked_fill(torch.rand_like(scores) < self.hparams.score_dropout, float("nan"))
        return self.head(
            attempt.float(),
            source.float(),
            batch["text"].float(),
            scores=scores,
            pixel_diff=batch.get("pixel_diff"),
        )

    def _loss(
        self, batch: dict[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pass_logit, flaw_logits = self(batch)
        weight = batch["weight"].float() if "weight" in batch else torch.ones_like(pass_logit)
        pass_loss = F.binary_cross_entropy_with_logits(
            pass_logit, batch["passed"].float(), weight=weight / weight.mean()
        )
        flaw_loss = F.cross_entropy(
            flaw_logits.flatten(0, 1), batch["target"].flatten(), weight=self.class_weights
        )
        rank_loss = within_request_rank_loss(pass_logit, batch["passed"], batch.get("group"), weight)
        loss = pass_loss + self.hparams.flaw_weight * flaw_loss + self.hparams.rank_weight * rank_loss
        bs = pass_logit.shape[0]
        self.log_dict(
            {
                f"{stage}/loss": loss,
                f"{stage}/pass_loss": pass_loss,
                f"{stage}/flaw_loss": flaw_loss,
                f"{stage}/rank_loss": rank_loss,
            },
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
        # the same attempts with every cheap score withheld: what the images and the text alone say
        image_only = self(batch, drop_scores=True)[0] if self.config.score_inputs else pass_logit
        out.append(
            {
                "p_pass": torch.sigmoid(pass_logit).cpu(),
                "p_pass_image": torch.sigmoid(image_only).cpu(),
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
        self.last_outputs[stage] = cat  # for the job's report (AUROC interval over requests)
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


def within_request_rank_loss(
    logits: torch.Tensor, passed: torch.Tensor, groups: torch.Tensor | None, weight: torch.Tensor
) -> torch.Tensor:
    """Pairwise logistic loss over (passing, failing) attempts of the same request in the batch:
    what selection among one request's candidates needs (0 when the batch has no such pair)."""
    if groups is None:
        return logits.sum() * 0.0
    y = passed.bool()
    pairs = (groups[:, None] == groups[None, :]) & y[:, None] & ~y[None, :]
    if not pairs.any():
        return logits.sum() * 0.0
    margin = logits[:, None] - logits[None, :]
    w = (weight[:, None] * weight[None, :])[pairs]
    return (F.softplus(-margin[pairs]) * w).sum() / w.sum()


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
