"""Load the predictors of one export directory together, with documented fallbacks.

A production service calls ``Predictors.load(export_dir)``. Each of CARD, the critique
head and the calibration is optional: what is missing or fails to load is recorded in
``load_failures`` (and logged) and the loop falls back (a fixed attempt budget, a
confidence without critique, no early stop) instead of refusing the request.
``strict=True`` turns any load failure into the ArtifactError it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ade_runtime.artifacts import CALIBRATION_NAME, CARD_NAME, CRITIQUE_NAME
from ade_runtime.errors import ArtifactError
from ade_runtime.policy import PolicyConfig

log = logging.getLogger(__name__)


@dataclass
class Predictors:
    """CARD, critique and calibration of one export; any may be None."""

    card: Any = None
    critique: Any = None
    calibrator: Any = None
    load_failures: dict[str, str] = field(default_factory=dict)

    @property
    def policy(self) -> PolicyConfig | None:
        """The thresholds calibration chose, when a calibration artifact is loaded."""
        if self.calibrator is None:
            return None
        return self.calibrator.config.policy

    @classmethod
    def load(cls, directory: str | Path, *, strict: bool = False, device: str = "cpu") -> Predictors:
        from ade_runtime.predictors.calibration import Calibrator
        from ade_runtime.predictors.card import CardPredictor
        from ade_runtime.predictors.critique import CritiquePredictor

        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: export directory not found (train one with `make train`)")
        out = cls()
        for attr, name, loader in (
            ("card", CARD_NAME, CardPredictor),
            ("critique", CRITIQUE_NAME, CritiquePredictor),
            ("calibrator", CALIBRATION_NAME, Calibrator),
        ):
            if not (directory / f"{name}.json").exists() and not (directory / f"{name}.safetensors").exists():
                out.load_failures[attr] = f"{directory / (name + '.json')}: not exported"
                continue
            try:
                setattr(out, attr, loader.from_pretrained(directory))
            except ArtifactError as exc:
                if strict:
                    raise
                out.load_failures[attr] = str(exc)
                log.warning("predictor %s not loaded, falling back: %s", attr, exc)
        if not any((out.card, out.critique, out.calibrator)):
            raise ArtifactError(f"{directory}: no predictor could be loaded ({out.load_failures})")
        return out
