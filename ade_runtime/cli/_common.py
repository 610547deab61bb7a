"""What the runtime's CLIs share: the backbone options, and their words adapted to the library
(``ade_runtime.backbones.load_backbone``, ``ade_runtime.stack``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ade_runtime import stack
from ade_runtime.backbones import BACKBONE_NAMES, default_device, load_backbone
from ade_runtime.stack import parse_pipeline_kwargs


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help=f"one of {', '.join(BACKBONE_NAMES)}")
    p.add_argument("--model", default=None, help="Hugging Face id or local path of the backbone's weights")
    p.add_argument(
        "--device",
        default=None,
        help="torch device for the backbone and predictors (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float16", "float32"),
        help="backbone weights (default bfloat16)",
    )
    p.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep one model component on the GPU at a time (diffusers model CPU offload; fits 24 GB cards, slower)",
    )
    p.add_argument(
        "--srm",
        action="store_true",
        help="capture the spatial reasoning mask for refinement rounds (flux-kontext)",
    )
    p.add_argument(
        "--pipeline-kwargs",
        default=None,
        metavar="JSON",
        help='backbone call arguments as a JSON object, e.g. \'{"negative_prompt": " ", "true_cfg_scale": 4.0, '
        '"num_inference_steps": 50}\'',
    )
    p.add_argument(
        "--scorer",
        default="auto",
        help="online scores: auto (testbed scores for the testbed, CLIP otherwise), testbed, clip[:ID_OR_PATH], none",
    )


def resolve_device(args: argparse.Namespace, prog: str) -> str:
    """``--device``, or cuda when available else cpu, said on stderr when chosen here."""
    if args.device is None:
        args.device = default_device()
        print(f"{prog}: --device not given, using {args.device}", file=sys.stderr)
    return args.device


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--pipeline-kwargs`` as a dict (a JSON typo is an InputError)."""
    return parse_pipeline_kwargs(args.pipeline_kwargs)


def build_backbone(args: argparse.Namespace, prog: str = "ade") -> Any:
    """The backbone the CLI words name; ``backbone.options`` records the GPU options for the trace."""
    resolve_device(args, prog)
    return load_backbone(
        args.backbone,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        srm=args.srm,
        pipeline_kwargs=pipeline_kwargs(args),
    )


def build_scorer(args: argparse.Namespace, backbone_name: str):
    """The online scorer ``--scorer`` names, on ``--device``."""
    return stack.build_scorer(args.scorer, backbone_name, device=args.device)
