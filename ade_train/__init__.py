"""ADE training: fits CARD, the critique head and the calibrations from edit traces.

Builds on `ade_runtime` (formats, predictor modules, replay); never the other way round.
"""

from ade_runtime import __version__

__all__ = ["__version__"]
