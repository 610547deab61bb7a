"""What a request runs on, built from plain values: the backbone's call arguments, the options it
records in every trace, and the online scorer.

The backbone itself is ``ade_runtime.backbones.load_backbone`` (explicit keyword options). The CLIs
(``ade_runtime.cli``) and ``ade-serve`` adapt their parsed options to these functions; nothing here
knows about argparse.
"""

from __future__ import annotations

import json
from typing import Any

from ade_runtime.errors import InputError

SCORER_SPECS = "auto, testbed, clip[:ID_OR_PATH] or none"


def parse_pipeline_kwargs(text: str | None) -> dict[str, Any]:
    """The backbone call arguments given as a JSON object (``--pipeline-kwargs``); ``{}`` for none."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--pipeline-kwargs is not valid JSON ({exc.msg}); pass an object like '{{\"key\": 1}}'"
        ) from exc
    if not isinstance(value, dict):
        raise InputError("--pipeline-kwargs must be a JSON object of argument names to values")
    return value


def backbone_meta(backbone: Any) -> dict[str, Any]:
    """What the trace's ``meta.backbone_options`` records (free-form meta, trace format v1)."""
    return {"backbone_options": dict(getattr(backbone, "options", {}) or {})}


def build_scorer(spec: str, backbone_name: str, *, device: str | None = None):
    """The online scorer ``spec`` names: ``auto`` (the testbed's scores for the testbed, CLIP
    otherwise), ``testbed``, ``clip[:ID_OR_PATH]`` (on ``device``) or ``none`` (None)."""
    if spec == "none":
        return None
    if spec == "testbed" or (spec == "auto" and backbone_name == "testbed"):
        from ade_runtime.testbed import online_scores

        return online_scores
    if spec == "auto" or spec.startswith("clip"):
        from ade_runtime.scoring import DEFAULT_CLIP, ClipScorer

        name = spec.split(":", 1)[1] if ":" in spec else DEFAULT_CLIP
        return ClipScorer.from_pretrained(name, device=device)
    raise InputError(f"--scorer {spec!r}: use {SCORER_SPECS}")
