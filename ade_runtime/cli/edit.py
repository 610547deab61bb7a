"""``ade-edit``: edit one image with ADE's adaptive loop and log the request as a trace.

    ade-edit --backbone testbed --predictors checkpoints/card --image source.png \\
             --instruction "Turn the red circle blue" --out edited.png --trace-dir traces/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from ade_runtime.artifacts import atomic_write_bytes
from ade_runtime.backbones.base import EditRequest
from ade_runtime.cli._common import add_backbone_args, backbone_meta, build_backbone, build_scorer
from ade_runtime.errors import ADEError
from ade_runtime.loop import AdaptiveEditor, EditResult
from ade_runtime.policy import POLICY_NAMES
from ade_runtime.predictors.bundle import Predictors


def summary(result: EditResult) -> dict:
    return {
        "chosen": list(result.chosen) if result.chosen is not None else None,
        "confidence": result.confidence,
        "budget": result.budget,
        "reasoning_tokens": result.reasoning_tokens,
        "card": result.card,  # CARD's budget and token choice and why (None: CARD not used)
        "decisions": result.decisions,  # the decision log, the budget/token choice first
        "attempts": len(result.attempts),
        "pruned": sum(1 for a in result.attempts if a.output is not None and a.output.pruned),
        "stop_reason": result.stop_reason,
        "nfe": result.nfe,
        "backbone_seconds": round(result.backbone_seconds, 4),
        "overhead_seconds": round(result.overhead_seconds, 4),
        "failures": [{k: v for k, v in f.items() if k != "trace"} for f in result.failures],
    }


def _png(img: Image.Image, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ade-edit", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    p.add_argument("--predictors", required=True, help="export directory of `make train`")
    p.add_argument("--image", required=True, help="source image (PNG/JPEG/WebP)")
    p.add_argument("--instruction", required=True, help="the edit instruction")
    p.add_argument("--out", required=True, help="where to write the edited image")
    p.add_argument("--trace-dir", default=None, help="append this request as a v1 trace here")
    p.add_argument(
        "--policy", default="ade", help=f"ade (default) or a baseline: {', '.join(POLICY_NAMES[:-1])}"
    )
    p.add_argument("--id", default=None, help="request id for the trace (default: a content hash)")
    p.add_argument("--category", default=None, help="optional category label for the trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    args = p.parse_args(argv)
    try:
        predictors = Predictors.load(args.predictors)
        for what, why in predictors.load_failures.items():
            print(f"ade-edit: {what} not loaded, using its fallback ({why})", file=sys.stderr)
        backbone = build_backbone(args, "ade-edit")
        scorer = build_scorer(args, args.backbone)
        try:
            with Image.open(args.image) as im:
                image = im.copy()
        except (OSError, ValueError) as exc:
            print(f"ade-edit: {args.image}: cannot read the image ({exc})", file=sys.stderr)
            return 2
        request = EditRequest(
            image=image,
            instruction=args.instruction,
            id=args.id or "request",
            category=args.category,
            meta=backbone_meta(backbone),
        )
        editor = AdaptiveEditor(backbone, predictors, policy=args.policy, scorer=scorer, seed=args.seed)
        result = editor.edit(request)
        if result.image is None:
            print(
                "ade-edit: every attempt failed; nothing to write (see the failures below)", file=sys.stderr
            )
        else:
            out = Path(args.out)
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(out.suffix.lower(), "PNG")
            atomic_write_bytes(out, _png(result.image, fmt))
        if args.trace_dir:
            from ade_runtime.trace_log import log_request
            from ade_runtime.traces import TraceWriter

            with TraceWriter(args.trace_dir) as writer:
                log_request(writer, result.request, result, backbone.name)
    except ADEError as exc:
        print(f"ade-edit: {exc}", file=sys.stderr)
        return 2
    s = summary(result)
    print(
        f"budget {s['budget']} attempts, {s['attempts']} run ({s['pruned']} pruned), stopped: {s['stop_reason']}, "
        f"chosen {s['chosen']} with confidence {s['confidence']}, NFE {s['nfe']}"
    )
    if args.json:
        print(json.dumps(s, sort_keys=True, default=float))
    return 0 if result.image is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
