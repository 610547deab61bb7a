"""What the runtime's CLIs share: building a backbone and a scorer from command-line words."""

from __future__ import annotations

import argparse
from typing import Any

from ade_runtime.backbones import BACKBONE_NAMES, load_backbone
from ade_runtime.errors import InputError


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help=f"one of {', '.join(BACKBONE_NAMES)}")
    p.add_argument("--model", default=None, help="Hugging Face id or local path of the backbone's weights")
    p.add_argument("--device", default="cpu", help="torch device for the backbone and predictors")
    p.add_argument(
        "--scorer",
        default="auto",
        help="online scores: auto (testbed scores for the testbed, CLIP otherwise), testbed, clip[:ID_OR_PATH], none",
    )


def build_backbone(args: argparse.Namespace) -> Any:
    return load_backbone(args.backbone, model=args.model, device=args.device)


def build_scorer(args: argparse.Namespace, backbone_name: str):
    spec = args.scorer
    if spec == "none":
        return None
    if spec == "testbed" or (spec == "auto" and backbone_name == "testbed"):
        from ade_runtime.testbed import online_scores

        return online_scores
    if spec == "auto" or spec.startswith("clip"):
        from ade_runtime.scoring import DEFAULT_CLIP, ClipScorer

        name = spec.split(":", 1)[1] if ":" in spec else DEFAULT_CLIP
        return ClipScorer.from_pretrained(name, device=args.device)
    raise InputError(f"--scorer {spec!r}: use auto, testbed, clip[:ID_OR_PATH] or none")
