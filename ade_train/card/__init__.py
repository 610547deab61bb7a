"""CARD's training: ``module`` (CardModule), ``data`` (TraceDataModule), ``metrics``, ``report``
(coverage plot) and ``job`` (``ade-train card``: config -> ``ade_train.runner.fit_and_export``)."""

from ade_train.card.job import build_config, cli_main, train, validation_baselines
from ade_train.card.module import CardModule

__all__ = ["CardModule", "build_config", "cli_main", "train", "validation_baselines"]
