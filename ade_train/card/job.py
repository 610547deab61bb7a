"""``ade-train card``: train CARD on any edit-trace v1 dataset and export it (``OUT/export``).

The job brings ``CardModule`` (``ade_train.card.module``), ``TraceDataModule``
(``ade_train.card.data``) and ``ade_train/configs/card.yaml``; ``ade_train.runner.fit_and_export``
does the rest (checkpoints, resume checks, W&B, early stopping, export, summary). Its report puts
CARD's validation NLL beside the constant prior's and the per-category prior's, and says so when
CARD does not beat them (which one is exported is the CARD issue's decision: CARD is, today).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ade_runtime.artifacts import CARD_NAME
from ade_runtime.predictors.card import CardModel, CardPredictor
from ade_train import tracking
from ade_train.card.data import TraceDataModule
from ade_train.card.metrics import category_prior_probs, censored_nll, prior_probs
from ade_train.card.module import CardModule
from ade_train.card.report import plot_coverage
from ade_train.export import PredictorSection, export_predictors
from ade_train.quality import card_warning
from ade_train.runconfig import job_parser, parse_job_args, run_cli
from ade_train.runner import TrainJob, fit_and_export, setup_data
from ade_train.splits import dataset_fingerprint

INTENDED_USE = (
    "Per-request attempt budget (quantile of the predicted need) and reasoning-token level for ADE's "
    "adaptive loop, on requests like the training data (same backbone, categories and encoders)."
)


def _export(out: Path, dm: TraceDataModule, module: CardModule, metrics: dict, warnings: list[str]) -> Path:
    predictor = CardPredictor(CardModel(module.config), dm.featurizer)
    predictor.model.load_state_dict(module.model.state_dict())
    info = dm.data_info()
    test_metrics = {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}
    section = PredictorSection(
        name=CARD_NAME,
        title="CARD budget predictor",
        data=info,
        metrics=test_metrics,
        encoders={role: fp for role, fp in dm.featurizer.fingerprints.items()},
        intended_use=INTENDED_USE,
        limitations="Budgets are in attempts of the training grid; requests beyond it get the largest level.",
        extra={"levels": module.config.levels, "token_levels": module.config.token_levels, "unit": dm.unit},
        warnings=list(warnings),
    )
    write = lambda d: predictor.save_pretrained(d, data_fingerprint=info.fingerprint, metrics=test_metrics)  # noqa: E731
    return export_predictors(out, [(section, write)])


def validation_baselines(module: CardModule, dm: TraceDataModule) -> dict[str, float]:
    """CARD's, the constant prior's and the per-category prior's NLL on the validation split."""
    split = "val" if dm.split_ids["val"] else "train"
    t, train = dm.tensors(split), dm.tensors("train")
    n = module.config.n_budget_classes
    module.eval()
    with torch.no_grad():
        logits = module(t["x"])[0]

    def nll(probs: torch.Tensor) -> float:
        return float(
            censored_nll(probs.clamp_min(1e-12).log(), t["level"], t["censor_from"], t["censored"]).mean()
        )

    cats = [str(r.category) for r in dm.records(split)]
    train_cats = [str(r.category) for r in dm.records("train")]
    per_cat = category_prior_probs(train["level"], train["censored"], train_cats, cats, n)
    return {
        "val/card_nll": float(censored_nll(logits, t["level"], t["censor_from"], t["censored"]).mean()),
        "val/prior_nll": nll(prior_probs(train["level"], train["censored"], n, len(cats))),
        "val/category_prior_nll": nll(per_cat),
    }


def _report(out: Path, dm: TraceDataModule):
    def report(module: CardModule, metrics: dict[str, float], logger: Any) -> tuple[dict, list[str]]:
        base = validation_baselines(module, dm)
        metrics.update(base)
        split = "test" if dm.split_ids["test"] else "val"
        t, train_t = dm.tensors(split), dm.tensors("train")
        with torch.no_grad():
            probs = module(t["x"])[0].softmax(-1)
        path = plot_coverage(
            out / "plots" / "card_coverage.png", probs, t["level"], t["censored"], module.config.levels,
            train_t["level"], train_t["censored"],
        )  # fmt: skip
        tracking.log_images(logger, "test/coverage_curve", [path])
        warning = card_warning(base["val/card_nll"], base["val/prior_nll"], base["val/category_prior_nll"])
        notes = {
            "coverage plot": str(path),
            "baselines (val NLL)": f"CARD {base['val/card_nll']:.4f}, constant prior {base['val/prior_nll']:.4f}, "
            f"per-category prior {base['val/category_prior_nll']:.4f}; exported: CARD",
        }
        return notes, [warning] if warning else []

    return report


def train(cfg: dict[str, Any]) -> dict[str, float]:
    """Train (or resume, or re-export) CARD as ``cfg`` says; returns the final metrics.

    ``cfg``: the card.yaml layout plus ``data_path``, ``out``, ``resume`` ("auto" | "must"), ``force``.
    """
    out, dm = setup_data(cfg, TraceDataModule)
    module_args = dict(input_dim=dm.input_dim, levels=dm.levels, token_levels=dm.token_levels, **cfg["model"])
    data_note = f"{dm.data_info().n_records} requests ({len(dm.rejects)} rejected lines)"
    job = TrainJob("card", "CARD", out, out, "val/nll", CardModule, module_args, dm,
                   dataset_fingerprint(dm.all_records), partial(_export, out, dm), _report(out, dm),
                   notes={"data": data_note})  # fmt: skip
    return fit_and_export(cfg, job)


def _parser() -> argparse.ArgumentParser:
    return job_parser(
        "card",
        "Train CARD on an edit-trace v1 dataset and export it to OUT/export.",
        run_dir="OUT",
        example="--model.hidden=[64,32] --data.batch_size=32 --trainer.max_epochs=10",
    )


def build_config(argv: Sequence[str]) -> dict[str, Any]:
    return parse_job_args("card", _parser(), argv)[0]


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_cli("card", build_config, train, argv)
