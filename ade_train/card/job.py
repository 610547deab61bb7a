"""``ade-train card``: train CARD on any edit-trace v1 dataset and export it (``OUT/export``).

The job brings ``CardModule`` (``ade_train.card.module``), ``TraceDataModule``
(``ade_train.card.data``) and ``ade_train/configs/card.yaml``; ``ade_train.runner.fit_and_export``
does the rest (checkpoints, resume checks, W&B, early stopping, export, summary). Its report puts
CARD's validation and test NLL beside the constant prior's and the per-category prior's (with the
category inferred from the request, and with the true label, which production requests lack), exports
CARD only when it beats the label-free prior on validation (else that prior with its category
classifier, in the same format) and says which and why; the token and hopeless-request thresholds are calibrated on the calibration
split (``ade_train.card.choice``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ade_runtime.artifacts import CARD_NAME
from ade_train import tracking
from ade_train.card.choice import choose_export, split_nll
from ade_train.card.data import TraceDataModule
from ade_train.card.module import CardModule
from ade_train.card.report import plot_coverage
from ade_train.export import PredictorSection, export_predictors
from ade_train.quality import card_warning
from ade_train.runconfig import job_parser, parse_job_args, run_cli
from ade_train.runner import TrainJob, fit_and_export, setup_data, up_to_date
from ade_train.splits import dataset_fingerprint

INTENDED_USE = (
    "Per-request attempt budget (quantile of the predicted need) and reasoning-token level for ADE's "
    "adaptive loop, on requests like the training data (same backbone, categories and encoders)."
)


def _export(
    out: Path, dm: TraceDataModule, notes: dict, module: CardModule, metrics: dict, warnings: list[str]
) -> Path:
    choice = choose_export(module, dm)
    notes["exported"] = f"{choice.source}: {choice.reason}"  # the job's notes: a re-export says it too
    predictor = choice.predictor
    info = dm.data_info()
    metrics.update(choice.nll)
    test_metrics = {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}
    th = choice.thresholds
    section = PredictorSection(
        name=CARD_NAME,
        title="CARD budget predictor"
        if choice.source == "card"
        else "CARD artifact: per-category prior with an inferred category",
        data=info,
        metrics=test_metrics,
        encoders={role: fp for role, fp in dm.featurizer.fingerprints.items()},
        intended_use=INTENDED_USE,
        limitations="Budgets are in attempts of the training grid in loop order (s_max "
        f"{dm.s_max}); requests whose need quantile falls beyond it get the calibrated give-up budget. "
        "The per-category prior uses a category the caller passes (recorded as budget_source "
        "'prior:given'); without one it infers the category from the instruction and image (a mixture of "
        "its rows, 'prior:inferred'). Validation NLL of each candidate is under baselines_nll.",
        extra={
            "levels": predictor.config.levels,
            "token_levels": predictor.config.token_levels,
            "unit": dm.unit,
            "exported": choice.source,
            "why": choice.reason,
            "baselines_nll": choice.nll,
            "thresholds": {
                k: (v if not isinstance(v, dict) else {"value": v.get(k), "why": v.get("why")})
                for k, v in th.items()
                if k != "category_classifier"
            },
            "category_classifier": th.get("category_classifier"),
        },  # fmt: skip
        warnings=list(warnings),
    )
    write = lambda d: predictor.save_pretrained(d, data_fingerprint=info.fingerprint, metrics=test_metrics)  # noqa: E731
    if choice.alternative is not None:  # the one not exported, for the benchmark's ablations
        alt = "category_prior" if choice.source == "card" else "card"
        choice.alternative.save_pretrained(out / "alternatives" / alt, data_fingerprint=info.fingerprint)
    return export_predictors(out, [(section, write)])


def validation_baselines(module: CardModule, dm: TraceDataModule) -> dict[str, float]:
    """CARD's, the constant prior's and the per-category prior's NLL on the validation split."""
    nll = split_nll(module, dm, "val" if dm.split_ids["val"] else "train")
    return {f"val/{k}_nll": v for k, v in nll.items()}


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
        choice = choose_export(module, dm)
        metrics.update(choice.nll)
        notes = {"coverage plot": str(path)}
        for split in ("val", "test"):
            if f"{split}/card_nll" in choice.nll:
                n = choice.nll
                notes[f"baselines ({split} NLL)"] = (
                    f"CARD {n[f'{split}/card_nll']:.4f}, constant prior {n[f'{split}/prior_nll']:.4f}, "
                    f"per-category prior with the category inferred {n[f'{split}/inferred_prior_nll']:.4f}, "
                    f"with the true label (not available in production) {n[f'{split}/category_prior_nll']:.4f}"
                )
        notes["exported"] = f"{choice.source}: {choice.reason}"
        if "category_classifier" in choice.thresholds:
            c = choice.thresholds["category_classifier"]
            notes["category classifier"] = (
                f"{c['classes']} categories, validation accuracy {c['val_accuracy']:.3f}, log-loss "
                f"{c['val_log_loss']:.3f} (L2 {c['l2']:g}, by validation)"
            )
        for name in ("gain_per_cost", "beyond_budget"):
            if name in choice.thresholds:
                t = choice.thresholds[name]
                notes[f"calibrated {name}"] = f"{t[name]} ({t['why']})"
        if choice.source != "card" and warning:
            warning += "; the per-category prior (category inferred from the request) is exported instead"
        return notes, [warning] if warning else []

    return report


def train(cfg: dict[str, Any]) -> dict[str, float]:
    """Train (or resume, or re-export) CARD as ``cfg`` says; returns the final metrics.

    ``cfg``: the card.yaml layout plus ``data_path``, ``out``, ``resume`` ("auto" | "must"), ``force``.
    """
    done = up_to_date(cfg, Path(cfg["out"]), CARD_NAME, "card")
    if done is not None:
        return done
    out, dm = setup_data(cfg, TraceDataModule)
    module_args = dict(input_dim=dm.input_dim, levels=dm.levels, token_levels=dm.token_levels, **cfg["model"])
    data_note = f"{dm.data_info().n_records} requests ({len(dm.rejects)} rejected lines)"
    notes = {"data": data_note}
    job = TrainJob("card", "CARD", out, out, "val/nll", CardModule, module_args, dm,
                   dataset_fingerprint(dm.all_records), partial(_export, out, dm, notes), _report(out, dm),
                   notes=notes)  # fmt: skip
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
