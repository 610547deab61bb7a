"""``ade-train critique``: train the DINOv2 critique head and export it next to CARD (``OUT/export``).

The job brings ``CritiqueModule`` (``ade_train.critique.module``), ``CritiqueDataModule``
(``ade_train.critique.data``) and ``ade_train/configs/critique.yaml``; ``ade_train.runner`` does the
rest. Its checkpoints, ``result.json`` and ``wandb_run.json`` live in ``OUT/critique`` (CARD's in
OUT), its W&B run under ``OUT/wandb`` with every other job's. Its report gives the test AUROC with a
90% bootstrap interval over held-out requests and warns when that is not above chance.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ade_runtime.artifacts import CRITIQUE_NAME
from ade_runtime.errors import InputError
from ade_runtime.predictors.critique import CritiqueHead, CritiquePredictor
from ade_train.critique.data import CritiqueDataModule
from ade_train.critique.evaluate import selection_metrics, trees_metrics
from ade_train.critique.module import CritiqueModule
from ade_train.export import PredictorSection, export_predictors
from ade_train.quality import auroc_interval, critique_warning
from ade_train.runconfig import job_parser, parse_job_args, run_cli
from ade_train.runner import TrainJob, fit_and_export, setup_data, up_to_date
from ade_train.splits import dataset_fingerprint

RUN_SUBDIR = "critique"  # OUT/critique holds this job's checkpoints, W&B run id and result (CARD uses OUT)
INTENDED_USE = (
    "Cheap stand-in for the offline judge inside ADE's loop: P(pass) of an attempt, a patch-level flaw "
    "map, refinement feedback naming the flaw region, and a mask confining the next round."
)


def build_predictor(module: CritiqueModule, dm: CritiqueDataModule) -> CritiquePredictor:
    """The runtime predictor of a trained module: its head, its (trained or frozen) encoder."""
    head = CritiqueHead(module.config)
    head.load_state_dict(module.head.state_dict())
    image_encoder = dm.image_encoder
    if module.encoder is not None:  # a fresh encoder object carrying the trained weights
        image_encoder = module._build_encoder()
        image_encoder.model.load_state_dict(module.encoder.state_dict())
    return CritiquePredictor(head, image_encoder, dm.text_encoder)


def _export(
    out: Path, dm: CritiqueDataModule, module: CritiqueModule, metrics: dict[str, float], warnings: list[str]
) -> Path:
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
        warnings=list(warnings),
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
        score_inputs=list(dm.score_inputs),
        score_mean=dm.score_stats()[0],
        score_std=dm.score_stats()[1],
        pixel_diff=dm.pixel_diff,
    )
    return {"head": head, **model}


def _report(dm: CritiqueDataModule, trees: bool):
    def report(module: CritiqueModule, metrics: dict[str, float], logger: Any) -> tuple[dict, list[str]]:
        split = "test" if dm.examples["test"] else "val"
        cat = module.last_outputs.get("test")
        if cat is None:
            return {}, []
        held_out = dm.examples[split]  # the test loader keeps this order
        groups = [ex.record_id for ex in held_out]
        p_pass, passed = cat["p_pass"].numpy(), cat["passed"].numpy()
        point, lo, hi = auroc_interval(p_pass, passed, groups)
        metrics.update({"test/auroc_lo": lo, "test/auroc_hi": hi})
        head = selection_metrics(p_pass, passed, groups)
        metrics.update({f"test/{k}": v for k, v in head.items() if k != "auroc"})
        image = selection_metrics(cat["p_pass_image"].numpy(), passed, groups)
        metrics.update({f"test/image_only_{k}": v for k, v in image.items() if k != "within_requests"})
        warning = critique_warning(point, lo, hi, split)
        notes = {
            "AUROC (90% CI over requests)": f"{point:.3f} [{lo:.3f}, {hi:.3f}]",
            "within-request AUROC": f"{head['within_auroc']:.3f} over {int(head['within_requests'])} "
            f"held-out requests; ECE {head['ece']:.3f}, Brier {head['brier']:.3f}",
        }
        warnings = [warning] if warning else []
        if dm.score_inputs:
            notes["within-request AUROC"] += f" (images + text only: {image['within_auroc']:.3f})"
        if trees:
            base = trees_metrics(dm.examples["train"], held_out, seed=dm.seed)
            metrics.update({f"test/trees_{k}": v for k, v in base.items() if k != "within_requests"})
            pixels = trees_metrics(dm.examples["train"], held_out, seed=dm.seed, cheap_scores=())
            metrics.update(
                {f"test/trees_image_only_{k}": v for k, v in pixels.items() if k != "within_requests"}
            )
            notes["trees baseline (same split)"] = (
                f"within-request AUROC {base['within_auroc']:.3f}, AUROC {base['auroc']:.3f}, "
                f"ECE {base['ece']:.3f}, Brier {base['brier']:.3f} (pixels only: within-request "
                f"AUROC {pixels['within_auroc']:.3f})"
            )
            if not head["within_auroc"] > base["within_auroc"]:
                warnings.append(
                    f"the head's within-request AUROC {head['within_auroc']:.3f} does not beat the "
                    f"trees baseline's {base['within_auroc']:.3f} ({split} split)"
                )
        return notes, warnings

    return report


def train(cfg: dict[str, Any]) -> dict[str, float]:
    """Train (or resume, or re-export) the critique head as ``cfg`` says; returns the final metrics.

    ``cfg``: the critique.yaml layout plus ``data_path``, ``out``, ``resume`` ("auto" | "must"), ``force``.
    """
    done = up_to_date(cfg, Path(cfg["out"]) / RUN_SUBDIR, CRITIQUE_NAME, "critique")
    if done is not None:
        return done
    mode = cfg["model"].get("encoder_mode", "frozen")
    out, dm = setup_data(cfg, CritiqueDataModule, encoder_mode=mode)
    notes = {
        "data": f"{sum(len(v) for v in dm.examples.values())} judged attempts "
        f"(skipped {dict(dm.skipped) or 'none'}; {len(dm.rejects)} rejected lines)",
        "head": f"kinds {list(dm.kinds)}, grid {dm.grid[0]}x{dm.grid[1]}, encoder {mode}",
    }
    job = TrainJob(
        name="critique",
        title="critique",
        out=out,
        run_dir=out / RUN_SUBDIR,  # CARD's run is OUT itself
        monitor="val/loss",
        module_cls=CritiqueModule,
        module_args=_module_args(cfg, dm),
        datamodule=dm,
        fingerprint=dataset_fingerprint(dm.records_used),
        export=partial(_export, out, dm),
        report=_report(dm, bool(cfg.get("trees_baseline", True))),
        notes=notes,
    )
    return fit_and_export(cfg, job)


# ---------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = job_parser(
        "critique",
        "Train the DINOv2 critique head on an edit-trace v1 dataset and export it to OUT/export.",
        run_dir="OUT/critique",
        example="--model.lr=0.001 --data.max_train_attempts=500 --trainer.max_epochs=3",
    )
    p.add_argument(
        "--encoder",
        help="'scratch_tiny' (tiny DINOv2 trained end to end, the testbed default) or a DINOv2 hub id / "
        "local path, used frozen (add --finetune-last-n N to train its last N layers)",
    )
    p.add_argument("--finetune-last-n", type=int, help="train the last N layers of the --encoder checkpoint")
    p.add_argument("--image-size", type=int, default=224, help="input side for a --encoder checkpoint")
    return p


def build_config(argv: Sequence[str]) -> dict[str, Any]:
    cfg, args = parse_job_args("critique", _parser(), argv)
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
    return cfg


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_cli("critique", build_config, train, argv)
