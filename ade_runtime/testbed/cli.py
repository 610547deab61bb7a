"""``ade-testbed``: generate synthetic-edit-world TESTBED traces, single requests and realism figures.

    ade-testbed generate --out data/sample --requests 2000 --seed 0
    ade-testbed generate --out data/shifted --seed 1 --clutter 5:10 --categories action,compose,remove
    ade-testbed request --out /tmp/req --seed 3 --category color [--append requests.jsonl]
    ade-testbed realism --requests 300

Everything this tool writes is testbed data (meta.testbed = true), never results on real models.
"""

from __future__ import annotations

import argparse
import json
import sys

from ade_runtime.errors import ADEError, InputError

_DESC = (
    "Synthetic edit world: a CPU TESTBED with known ground truth. Its traces and figures are never "
    "results on real models."
)


def _clutter(s: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in s.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--clutter {s!r} must be LO:HI, e.g. 1:8") from e
    return lo, hi


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{s!r} must be comma-separated integers, e.g. 0,512") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ade-testbed", description=_DESC)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a format-v1 trace dataset (resumable; .complete written last)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--requests", type=int, default=3000, help="number of edit requests (default 3000)")
    g.add_argument("--seed", type=int, default=0, help="world seed (another seed = held-out data)")
    g.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    g.add_argument("--clutter", type=_clutter, default=(1, 8), help="objects per scene LO:HI (default 1:8)")
    g.add_argument(
        "--backbone", default="bagel", help="cost model: flux-kontext, step1x-edit, bagel (default)"
    )
    g.add_argument("--candidates", type=int, default=8, help="Best-of-N axis (default 8)")
    g.add_argument("--rounds", type=int, default=4, help="refinement depth (default 4)")
    g.add_argument("--reasoning", type=_ints, default=(0, 512), help="reasoning-token levels (default 0,512)")
    g.add_argument("--image-size", type=int, default=96, help="image side in pixels, 64-128 (default 96)")
    g.add_argument(
        "--image-every",
        type=int,
        default=1,
        help="store attempt images for every n-th request (default 1: all; raise it for small disks)",
    )
    g.add_argument("--ambiguity", type=float, default=0.1, help="share of ambiguous references (default 0.1)")
    g.add_argument(
        "--phrasing",
        default="grammar",
        help="comma-separated phrasing families drawn uniformly: grammar, polite, casual, wish (the "
        "held-out family; keep it out of training data) (default: grammar)",
    )
    g.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    r = sub.add_parser("request", help="write one testbed source PNG and print its instruction")
    r.add_argument("--out", required=True, help="output directory (source.png, request.json)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--category", default=None, help="edit category (default: any)")
    r.add_argument("--image-size", type=int, default=96)
    r.add_argument(
        "--append",
        metavar="FILE",
        default=None,
        help="also append the request as a line of an ade-collect requests file (image path relative to FILE)",
    )
    r.add_argument("--id", default=None, help="request id in the --append line (default: testbed-SEED)")
    m = sub.add_parser("realism", help="measure the realism figures on requests simulated in memory")
    m.add_argument("--requests", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--backbone", default="bagel")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "generate":
            from ade_runtime.testbed.generate import generate_dataset

            cats = (
                None
                if args.categories is None
                else tuple(c.strip() for c in args.categories.split(",") if c.strip())
            )
            summary = generate_dataset(
                args.out,
                n_requests=args.requests,
                seed=args.seed,
                progress=not args.quiet,
                categories=cats,
                clutter=args.clutter,
                backbone=args.backbone,
                candidates=args.candidates,
                rounds=args.rounds,
                reasoning_levels=args.reasoning,
                image_size=args.image_size,
                image_every=args.image_every,
                ambiguity=args.ambiguity,
                phrasing=tuple(f.strip() for f in args.phrasing.split(",") if f.strip()),
                workers=args.workers,
            )
            print(json.dumps(summary, sort_keys=True))
        elif args.cmd == "request":
            _request(args)
        else:
            from ade_runtime.testbed.realism import measure, refinement_experiment

            out = measure(args.requests, args.seed, args.backbone)
            out["refinement"] = refinement_experiment(args.requests, args.seed, args.backbone)
            print(json.dumps(out, indent=2, sort_keys=True))
    except ADEError as e:
        print(f"ade-testbed: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished shards stay; a rerun skips them
        print("\nade-testbed: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _request(args) -> None:
    from pathlib import Path

    import numpy as np

    from ade_runtime.files import atomic_write_bytes
    from ade_runtime.testbed.imageio import make_image, save_png
    from ade_runtime.testbed.world import World

    if not 64 <= args.image_size <= 128:
        raise InputError(f"--image-size {args.image_size} must be in [64, 128]")
    world = World(args.seed, args.image_size)
    cats = None if args.category is None else (args.category,)
    req = world.sample_request(np.random.default_rng([args.seed, 0x5EED]), cats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_png(make_image(req.source, req.source, args.image_size), out / "source.png")
    info = {"testbed": True, "instruction": req.instruction, "category": req.category, "seed": args.seed}
    atomic_write_bytes(out / "request.json", json.dumps(info, indent=2, sort_keys=True).encode())
    if args.append:
        _append_request(Path(args.append), out / "source.png", args.id or f"testbed-{args.seed}", req)
    print(req.instruction)


def _append_request(path, source, rid: str, req) -> None:
    """Append one ``{"id", "image", "instruction", "category"}`` line (ade-collect's format)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                if line.strip() and json.loads(line).get("id") == rid:
                    raise InputError(
                        f"--append {path}:{n}: id {rid!r} is already there; pass another --id or --seed"
                    )
            except (json.JSONDecodeError, AttributeError):
                continue
    image = os.path.relpath(source.resolve(), path.resolve().parent)
    line = {"id": rid, "image": image, "instruction": req.instruction, "category": req.category}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
