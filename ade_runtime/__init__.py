"""ADE runtime: formats, predictors and the adaptive editing loop.

The runtime is the core of ADE and needs only torch, safetensors, numpy and pillow
(plus a backbone's own library). It never imports the training stack (`ade_train`,
Lightning, W&B, scikit-learn). The public names below are imported lazily, so
``import ade_runtime`` stays cheap::

    from ade_runtime import AdaptiveEditor, EditRequest, Predictors, load_backbone, testbed_scorer
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AdaptiveEditor": "ade_runtime.loop",
    "EditResult": "ade_runtime.loop",
    "validate_request": "ade_runtime.loop",
    "EditRequest": "ade_runtime.backbones.base",
    "load_backbone": "ade_runtime.backbones",
    "BACKBONE_NAMES": "ade_runtime.backbones",
    "Predictors": "ade_runtime.predictors.bundle",
    "RuntimeOptions": "ade_runtime.predictors.config_base",
    "PolicyConfig": "ade_runtime.policy",
    "POLICY_NAMES": "ade_runtime.policy",
    "TraceWriter": "ade_runtime.traces",
    "TraceDataset": "ade_runtime.traces",
    "load_records": "ade_runtime.traces",
    "log_request": "ade_runtime.traces.serving",
    "ClipScorer": "ade_runtime.scoring",
    "ADEError": "ade_runtime.errors",
    "ArtifactError": "ade_runtime.errors",
    "InputError": "ade_runtime.errors",
    "TraceError": "ade_runtime.errors",
}
# the testbed's cheap online scores (no download): the scorer to use with load_backbone("testbed")
_ALIASES = {"testbed_scorer": ("ade_runtime.testbed.judge", "online_scores")}

__all__ = sorted([*_EXPORTS, *_ALIASES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _ALIASES:
        module, attr = _ALIASES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
