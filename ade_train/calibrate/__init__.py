"""Calibration (``ade-train calibrate``): calibrated P(pass) and certified policy thresholds.

``config`` (CalibrateConfig, its defaults in ``configs/calibrate.yaml``, the command line),
``features`` (the signal table), ``fit`` (scikit-learn calibration maps), ``search`` (threshold
search by replay), ``risk_control`` (Learn-then-Test maths: risk, WSR / Hoeffding-Bentkus p-values,
Pareto order, fixed-sequence testing), ``decision`` (certifying a replayed grid, the exported
policy), ``controller`` (``PolicyCalibrator``: configure, ``fit``, fitted attributes), ``coverage``
(re-split check of a certificate), ``plots``, ``report`` (metrics, export, W&B run) and ``job`` (the
glue and its CLI). Not a Lightning fit: no checkpoints, no epochs; it shares the config layer
(``ade_train.runconfig``), the splits, the export and the tracking with the other jobs.
"""

from ade_train.calibrate.config import CalibrateConfig, load_config
from ade_train.calibrate.controller import PolicyCalibrator
from ade_train.calibrate.job import calibration_split, cli_main, train

__all__ = ["CalibrateConfig", "PolicyCalibrator", "calibration_split", "cli_main", "load_config", "train"]
