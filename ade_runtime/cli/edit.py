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
from ade_runtime.cli._common import add_backbone_args, build_backbone, build_scorer, pipeline_kwargs
from ade_runtime.cli._io import (
    IMAGE_SUFFIXES,
    add_predictor_args,
    check_backbone_name,
    cli_main,
    load_predictors,
    prepare_out_dir,
    prepare_out_file,
)
from ade_runtime.cli._verifier import add_verifier_args, build_verifier, check_verifier_args
from ade_runtime.errors import InputError
from ade_runtime.images import image_bytes
from ade_runtime.loop import AdaptiveEditor, EditResult
from ade_runtime.policy import POLICY_NAMES
from ade_runtime.requests import validate_request
from ade_runtime.stack import backbone_meta
from ade_runtime.traces.staging import file_mode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ade-edit", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    add_predictor_args(
        p, required=True, help="export directory of `make train` (OUT/export; OUT itself works too)"
    )
    add_verifier_args(p)
    p.add_argument("--image", required=True, help="source image (PNG/JPEG/WebP)")
    p.add_argument("--instruction", required=True, help="the edit instruction")
    p.add_argument(
        "--out",
        required=True,
        help="where to write the edited image (.png, .jpg, .webp); folders are created",
    )
    p.add_argument("--trace-dir", default=None, help="append this request as a v1 trace here")
    p.add_argument(
        "--policy", default="ade", help=f"ade (default) or a baseline: {', '.join(POLICY_NAMES[:-1])}"
    )
    p.add_argument("--id", default=None, help="request id for the trace (default: a content hash)")
    p.add_argument(
        "--category",
        default=None,
        help="the request's category, if known: a per-category-prior CARD uses it (recorded as budget_source "
        "prior:given); default: inferred from the instruction and image",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    return p


def _read_request(args: argparse.Namespace) -> EditRequest:
    """The request from --image and --instruction, refused with the option the user typed."""
    try:
        with Image.open(args.image) as im:
            image = im.copy()
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{args.image}: cannot read the image ({exc}); pass a PNG, JPEG or WebP file"
        ) from None
    try:
        request = validate_request(
            EditRequest(
                image=image, instruction=args.instruction, id=args.id or "request", category=args.category
            )
        )
    except InputError as exc:  # "the request: ..." -> name the option the user typed
        option = "--instruction" if "instruction" in str(exc) else f"--image {args.image}"
        raise InputError(f"{option}: {str(exc).removeprefix('the request: ')}") from None
    return request


def _report(result: EditResult, args: argparse.Namespace, out: Path, trace_id: str | None) -> None:
    """What ade-edit prints: the summary, the verifier's calls, where things went, the --json line."""
    s = result.summary()
    conf = "n/a" if s["confidence"] is None else f"{s['confidence']:.3f}"
    print(
        f"budget {s['budget']} attempts, {s['attempts']} run ({s['pruned']} pruned), stopped: {s['stop_reason']}, "
        f"chosen {s['chosen']} with confidence {conf}, NFE {s['nfe']}"
    )
    if result.verifier is not None:
        v = result.verifier
        print(
            f"verifier {v['name']}: {len(result.verifier_calls)} call(s), {result.verifier_seconds:.2f} GPU-s"
            + ("" if v["called"] else " (not called: the calibration does not read its score)")
        )
    if result.image is not None:
        print(f"image written to {out}")
    if args.trace_dir:
        where = f"record {trace_id!r}" if trace_id else f"{args.trace_dir}/failed-requests.log"
        print(f"trace written to {args.trace_dir} ({where})")
    if args.json:
        s.update(
            out=str(out) if result.image is not None else None, trace_dir=args.trace_dir, trace_id=trace_id
        )
        print(json.dumps(s, sort_keys=True, default=float))


@cli_main("ade-edit")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # everything cheap first: output paths, the image and the instruction, then predictors and backbone
    check_backbone_name(args.backbone)
    pipeline_kwargs(args)  # a JSON typo is refused before anything loads
    check_verifier_args(args)
    out = prepare_out_file(args.out)
    if args.trace_dir:
        prepare_out_dir(args.trace_dir, "--trace-dir")
    request = _read_request(args)
    predictors = load_predictors(args, "ade-edit")
    backbone = build_backbone(args, "ade-edit")
    request.meta.update(backbone_meta(backbone))  # the GPU options, recorded in the trace
    scorer = build_scorer(args, args.backbone)
    verifier = build_verifier(args)
    editor = AdaptiveEditor(
        backbone, predictors, policy=args.policy, scorer=scorer, seed=args.seed, verifier=verifier
    )
    result = editor.edit(request)
    if result.image is None:
        print("ade-edit: every attempt failed; nothing to write (see the failures below)", file=sys.stderr)
    else:
        atomic_write_bytes(out, image_bytes(result.image, IMAGE_SUFFIXES[out.suffix.lower()]))
        out.chmod(file_mode())
    trace_id = None
    if args.trace_dir:
        from ade_runtime.traces import TraceWriter
        from ade_runtime.traces.serving import log_request

        with TraceWriter(args.trace_dir) as writer:
            record = log_request(writer, result.request, result, backbone.name)
        trace_id = record.id if record is not None else None
    _report(result, args, out, trace_id)
    return 0 if result.image is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
