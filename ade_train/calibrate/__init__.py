"""Calibration (``ade-train calibrate``): ``config`` (CalibrateConfig), ``features`` (signal table),
``fit`` (calibration maps), ``search`` (policy thresholds by replay), ``plots``, ``report``
(metrics, export, W&B run) and ``job`` (the job and its CLI). Not a Lightning fit: no checkpoints,
no epochs; it shares the splits (``ade_train.splits``), the export and the tracking with the others."""

from ade_train.calibrate.config import CalibrateConfig, load_config
from ade_train.calibrate.job import calibration_split, cli_main, train

__all__ = ["CalibrateConfig", "calibration_split", "cli_main", "load_config", "train"]
