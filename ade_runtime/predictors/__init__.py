"""ADE's predictors as plain torch modules, loadable from an export directory.

- ``card``: CARD, the complexity-adaptive budget (attempts and reasoning tokens) per request.
- ``critique``: the DINOv2 critique head (pass probability, flaw map, feedback text, region).
- ``calibration``: calibrated confidence P(pass) from online signals, and the policy thresholds.
- ``bundle``: ``Predictors.load(export_dir)``, the three together (strict; fallbacks on request).
- ``config_base``: the base of every saved config and the never-saved ``RuntimeOptions``.

Names are imported lazily so that ``import ade_runtime.predictors`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CardPredictor": "card",
    "CardConfig": "card",
    "BudgetPrediction": "budget_prediction",
    "CritiquePredictor": "critique",
    "CritiqueConfig": "critique",
    "Critique": "critique",
    "should_refine": "critique",
    "Calibrator": "calibration",
    "CalibrationConfig": "calibration",
    "RequestFeaturizer": "features",
    "Predictors": "bundle",
    "resolve_export_dir": "bundle",
    "ArtifactConfig": "config_base",
    "RuntimeOptions": "config_base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
