"""The critique head's training: ``module`` (CritiqueModule, metrics), ``data`` (CritiqueDataModule)
and ``job`` (``ade-train critique``: config -> ``ade_train.runner.fit_and_export``)."""

from ade_runtime.stats import auroc
from ade_train.critique.job import build_config, build_predictor, cli_main, train
from ade_train.critique.module import CritiqueModule, critique_metrics, patch_tokens

__all__ = [
    "CritiqueModule",
    "auroc",
    "build_config",
    "build_predictor",
    "cli_main",
    "critique_metrics",
    "patch_tokens",
    "train",
]
