"""CardModule: CARD (complexity-adaptive budget predictor) as a LightningModule.

Wraps the runtime ``CardModel`` (ade_runtime/predictors/card.py) with the censored NLL of
``ade_train.card.metrics``; starts from the constant prior (output bias = log prior of the train
split) and reports the prior's metrics beside its own on the test split. After
lightning-hydra-template's ``src/models/*_module.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import lightning as L
import torch

from ade_runtime.errors import InputError
from ade_runtime.predictors.card import CardConfig, CardModel
from ade_train.card.data import TraceDataModule
from ade_train.card.metrics import (
    card_loss,
    card_metrics,
    category_prior_probs,
    censored_nll,
    prior_probs,
    token_pass_prior,
)


class CardModule(L.LightningModule):
    """CARD training: censored NLL over loop-order budget levels + token P(pass) BCE; metrics on val/test."""

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
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = CardConfig(
            input_dim=input_dim,
            levels=list(levels),
            token_levels=list(token_levels or [0]),
            hidden=list(hidden or [128, 64]),
            dropout=dropout,
            token_target="pass",
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
                if self.hparams.residual and self._start_from_prior(dm):
                    return
                # Start near the constant prior (output bias = log prior): the need is noisy per request,
                # so the head should learn departures from it (a resume loads the checkpoint over this).
                with torch.no_grad():
                    self.model.budget_head.bias.copy_(self._prior.clamp_min(1e-6).log())
                    self.model.token_head.bias.copy_(
                        token_pass_prior(train["token_pass"]).clamp(1e-3, 1 - 1e-3).logit()
                    )

    def _start_from_prior(self, dm: TraceDataModule) -> bool:
        """Residual CARD: the model starts as the label-free per-category prior (the category classifier
        fit on the train split, L2 by validation, frozen; the train split's rows) and learns only where
        a request departs from its category's need. A plain MLP has to relearn the categories from the
        train split and overfits within them (its best epoch was the first). False: fewer than two
        categories, nothing to start from."""
        from ade_train.card.category import fit_category_classifier

        cats = {s: [str(r.category) for r in dm.records(s)] for s in ("train", "val")}
        if len(set(cats["train"])) < 2:
            return False
        m = self.model
        z = {s: (dm.tensors(s)["x"] - m.feature_mean) / m.feature_std for s in ("train", "val")}
        clf = fit_category_classifier(z["train"], cats["train"], z["val"], cats["val"])
        if clf is None:
            return False
        train = dm.tensors("train")
        n = self.config.n_budget_classes
        rows = category_prior_probs(train["level"], train["censored"], cats["train"], clf.names, n)
        table = {c: rows[i].tolist() for i, c in enumerate(clf.names)}
        table["*"] = self._prior.tolist()
        self.config = replace(self.config, categories=list(clf.names), offset_probs=table)
        model = CardModel(self.config)
        with torch.no_grad():
            model.feature_mean.copy_(m.feature_mean)
            model.feature_std.copy_(m.feature_std)
            model.category_head.weight.copy_(clf.weight)
            model.category_head.bias.copy_(clf.bias)
            model.budget_head.weight.zero_()  # exactly the prior at the start
            model.budget_head.bias.zero_()
            model.token_head.bias.copy_(token_pass_prior(train["token_pass"]).clamp(1e-3, 1 - 1e-3).logit())
        model.category_head.requires_grad_(False)
        self.model = model
        return True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["card_config"] = self.config.to_dict()  # a residual CARD's categories and rows

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("card_config")
        if saved is not None and saved != self.config.to_dict():
            self.config = CardConfig.from_dict(saved, "CARD checkpoint")
            self.model = CardModel(self.config)
            if self.model.category_head is not None:
                self.model.category_head.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def _loss(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, level, censor_from, censored, token_pass = batch
        b, t = self(x)
        total, nll, tok = card_loss(b, t, level, censor_from, censored, token_pass, self.hparams.token_weight)
        return total, nll, tok, b, t

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, nll, tok, _, _ = self._loss(batch)
        self.log_dict(
            {"train/loss": total, "train/nll": nll, "train/token_bce": tok},
            on_epoch=True,
            on_step=False,
            sync_dist=True,
        )
        return total

    def _eval_step(self, batch: Sequence[torch.Tensor], prefix: str) -> None:
        total, nll, _, b, t = self._loss(batch)
        self.log(f"{prefix}/loss", total, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        self.log(f"{prefix}/nll", nll, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))
        _, level, censor_from, censored, token_pass = batch
        self._outputs.append((b.softmax(-1), t.sigmoid(), level, censor_from, censored, token_pass))

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
        probs, tprobs, level, censor_from, censored, token_pass = cols
        m = card_metrics(probs, tprobs, level, censored, token_pass, self.config.levels, self.quantiles)
        if prefix == "test" and self._prior is not None:
            base = card_metrics(
                self._prior.expand_as(probs),
                tprobs,
                level,
                censored,
                token_pass,
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
