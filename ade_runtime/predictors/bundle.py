"""Load the predictors of one export directory together: strict by default, fallbacks on request.

A production service calls ``Predictors.load(export_dir)``. Loading is strict, as trusted model
servers are: a predictor that is present but corrupt or incompatible raises the ArtifactError
naming its file, and so does a missing one. ``strict=False`` (``--allow-fallback`` in the CLIs)
lets a *missing* predictor fall back (a fixed attempt budget, a confidence without critique, no
early stop); the fallback is recorded in ``load_failures``, logged, and written into every trace
the loop logs (``meta.ade.failures``, stage ``load``). A corrupt one is refused either way.
Failures while serving (an exception on one request) keep the loop's documented fallbacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ade_runtime.artifacts import CALIBRATION_NAME, CARD_NAME, CRITIQUE_NAME
from ade_runtime.errors import ArtifactError
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.config_base import RuntimeOptions

log = logging.getLogger(__name__)

# attribute -> (artifact name, what the loop does without it)
SLOTS = {
    "card": (CARD_NAME, "a fixed attempt budget (PolicyConfig.default_budget)"),
    "critique": (CRITIQUE_NAME, "no critique: confidence from the scores only, refinements without feedback"),
    "calibrator": (CALIBRATION_NAME, "no calibrated confidence: no early stop, the first attempt is chosen"),
}


def _has_artifact(directory: Path) -> bool:
    return any((directory / f"{name}.json").exists() for name, _ in SLOTS.values())


def resolve_export_dir(directory: str | Path) -> tuple[Path, str | None]:
    """The export directory to load, and a note when a training OUT dir was given (OUT/export is used)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(
            f"{directory}: export directory not found; pass the export of `make train` (OUT/export)"
        )
    if not _has_artifact(directory) and _has_artifact(directory / "export"):
        return (
            directory / "export",
            f"{directory} is a training directory; using its export {directory / 'export'}",
        )
    return directory, None


@dataclass
class Predictors:
    """CARD, critique and calibration of one export; any may be None."""

    card: Any = None
    critique: Any = None
    calibrator: Any = None
    load_failures: dict[str, str] = field(default_factory=dict)
    directory: Path | None = None
    note: str | None = None

    @property
    def policy(self) -> PolicyConfig | None:
        """The thresholds calibration chose, when a calibration artifact is loaded."""
        if self.calibrator is None:
            return None
        return self.calibrator.config.policy

    def claim(self) -> dict | None:
        """What calibration certified for its thresholds (None: no calibration, or an export without it)."""
        if self.calibrator is None:
            return None
        return getattr(self.calibrator.config, "claim", None)

    def fallbacks(self) -> list[dict[str, str]]:
        """One entry per predictor that was not loaded, as recorded in ``meta.ade.failures``."""
        return [
            {"stage": "load", "predictor": attr, "error": why, "fallback": SLOTS[attr][1]}
            for attr, why in self.load_failures.items()
        ]

    def fallback_lines(self) -> list[str]:
        """Sentences for a CLI to print: what is missing and what the loop does instead."""
        return [
            f"{f['predictor']} not loaded ({f['error']}); using {f['fallback']}" for f in self.fallbacks()
        ]

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        strict: bool = True,
        device: str = "cpu",
        dtype: str | None = None,
        options: RuntimeOptions | None = None,
    ) -> Predictors:
        """Load every predictor of ``directory`` (an export, or a training OUT dir: OUT/export is used).

        strict=True (default): a missing predictor is an error too; strict=False: a missing one
        falls back (see ``load_failures``). A present but unloadable one always raises.
        ``device`` / ``dtype`` (or ``options``) say where the modules run; they are never saved.
        """
        from ade_runtime.predictors.calibration import Calibrator
        from ade_runtime.predictors.card import CardPredictor
        from ade_runtime.predictors.critique import CritiquePredictor

        options = options or RuntimeOptions(device=device, dtype=dtype)
        directory, note = resolve_export_dir(directory)
        if note:
            log.info(note)
        if not _has_artifact(directory):
            hint = directory / "export"
            raise ArtifactError(
                f"{directory}: no predictor found (no card.json, critique.json or calibration.json); "
                f"pass an export directory such as {hint} (make train writes OUT/export)"
            )
        out = cls(directory=directory, note=note)
        loaders = {"card": CardPredictor, "critique": CritiquePredictor, "calibrator": Calibrator}
        for attr, (name, _) in SLOTS.items():
            json_path = directory / f"{name}.json"
            if not json_path.exists():
                if (directory / f"{name}.safetensors").exists():
                    raise ArtifactError(
                        f"{json_path}: missing file beside {name}.safetensors; re-export the {attr}"
                    )
                if strict:
                    raise ArtifactError(
                        f"{json_path}: not exported; export the {attr} into {directory}, or pass "
                        "--allow-fallback (strict=False) to run without it"
                    )
                out.load_failures[attr] = f"{json_path} not exported"
                log.warning("predictor %s not exported, falling back to %s", attr, SLOTS[attr][1])
                continue
            predictor = loaders[attr].from_pretrained(directory)
            if attr != "calibrator":  # a few float64 scalars per attempt: always on CPU
                predictor = predictor.to(options.device, options.torch_dtype)
            setattr(out, attr, predictor)
        return out
