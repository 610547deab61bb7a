"""A bench on a user's own traces (``make bench-domain DATA=DIR``): split, train, certify, replay.

1. DIR's judged requests are split by request id (sha256 of the id within each category) into a
   training part and a held-out part (``--held-out``, default 0.25); both are written under ``--work``
   as trace datasets of DIR's original lines, images hard-linked (copied where a link fails). The split
   is recorded with DIR's fingerprint: a rerun reuses it, another DIR in the same ``--work`` is refused.
2. ``make train`` on the training part (``ade-train card``, ``critique``, ``calibrate`` into
   ``WORK/model``; a rerun resumes at the first unfinished job), timed.
3. Replay on the held-out part: the export beside Best-of-1/2/4/8 with the same calibrated selector, the
   uncertified sweeps and the hindsight oracles; paired 90% intervals against the certificate's
   reference and Best-of-8; NFE and GPU-seconds with every check and verifier call.
4. Live, where DIR is a testbed world (its ``generation.json``): the export, its reference and Best-of-N
   on fresh requests of that world (a real backbone's live run is ``ade-edit`` / ``ade-serve``).
5. The certificate (claim, declared and asked margin, n) and the critique head beside its trees
   baseline on the critique job's held-out split.

Without ``--data`` it benches the project's stand-in for a user's new domain: a testbed world with
other settings than the default data (``WORLD_B``: other seed, categories, clutter, ambiguity and cost
model), 2,000 requests generated into ``data/world-b`` when missing. Testbed figures are labelled so.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

from ade_runtime.errors import InputError
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench.parts import part_target, write_part

HELD_OUT = 0.25
NFE_SHARE = 0.5  # of Best-of-8's NFE on the held-out requests (the new-domain target)
POLICIES = ("best_of_1", "best_of_2", "best_of_4", "best_of_8", "best_of_8_oracle", "confidence_stop",
            "card_only", "ade", "oracle")  # fmt: skip
# The stand-in for a user's domain: settings the defaults were not chosen on.
WORLD_B = {
    "seed": 77,
    "requests": 2000,
    "categories": "add,remove,replace,color,material,background,action,compose,text",
    "clutter": "3:7",
    "ambiguity": 0.2,
    "backbone": "flux-kontext",
    "image_every": 2,
}
SPLIT_FILE = "split.json"


def _rank(seed: int, rid: str) -> str:
    return hashlib.sha256(f"held-out:{seed}:{rid}".encode()).hexdigest()


def held_out_ids(records, fraction: float, seed: int) -> set[str]:
    """The held-out request ids: within each category, the last ``fraction`` by sha256(seed, id)."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--held-out must lie strictly between 0 and 1, got {fraction}")
    strata: dict[str, list[str]] = defaultdict(list)
    for r in records:
        strata[str(r.category)].append(r.id)
    out: set[str] = set()
    for ids in strata.values():
        ids.sort(key=lambda i: _rank(seed, i))
        out.update(ids[len(ids) - round(fraction * len(ids)) :])
    return out


def _shard_lines(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def split_dataset(data: Path, work: Path, fraction: float = HELD_OUT, seed: int = 0) -> dict:
    """Write WORK/split/{train,held-out} from DATA (once; reused when DATA and the settings match)."""
    from ade_runtime.progress import progress
    from ade_runtime.traces.reader import find_shards
    from ade_train.splits import dataset_fingerprint

    records, rejects = load_records(data, images="none")
    if not records:
        raise InputError(
            f"{data}: no valid trace records to bench; check it with `ade-traces validate {data}`"
        )
    want = {"data": str(data.resolve()), "fingerprint": dataset_fingerprint(records), "held_out": fraction,
            "seed": seed}  # fmt: skip
    root = work / "split"
    info_file = root / SPLIT_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if {k: info.get(k) for k in want} != want:
            raise InputError(
                f"{info_file}: this work directory holds a split of another dataset or setting "
                f"({ {k: info.get(k) for k in want} }); pass another --work, or delete {root} to split again"
            )
        return info
    held = held_out_ids(records, fraction, seed)
    tmp = work / f".split-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    parts = {"train": tmp / "train", "held-out": tmp / "held-out"}
    shards = find_shards(data)
    shard_set = {p.resolve() for p in shards}
    counts = {"train": 0, "held-out": 0}
    for shard in progress(shards, desc="bench-domain split (traces)"):
        name = shard.name.removesuffix(".gz")
        outs = {k: (d / shard.relative_to(data).parent / name) for k, d in parts.items()}
        for p in outs.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        with open(outs["train"], "wb") as ft, open(outs["held-out"], "wb") as fh:
            for line in _shard_lines(shard):
                try:
                    rid = json.loads(line).get("id")
                except (ValueError, AttributeError):
                    rid = None  # not a record: left in the training part, whose reader reports it
                key = "held-out" if rid in held else "train"
                (fh if key == "held-out" else ft).write(line if line.endswith(b"\n") else line + b"\n")
                counts[key] += 1
    others = [p for p in data.rglob("*") if p.is_file() and p.resolve() not in shard_set]
    for p in progress(others, desc="bench-domain split (images)"):
        rel = p.relative_to(data)
        for d in parts.values():
            _link(p, d / rel)
    info = {**want, "train_lines": counts["train"], "held_out_lines": counts["held-out"],
            "held_out_requests": len(held), "train_requests": len(records) - len(held),
            "rejected": len(rejects)}  # fmt: skip
    (tmp / SPLIT_FILE).write_text(json.dumps(info, indent=2))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return info


def ensure_world_b(path: Path) -> Path:
    """The project's stand-in for a user's new domain (``WORLD_B``), generated when missing."""
    from ade_train.bench.run import ensure_data

    w = WORLD_B
    ensure_data(path, ["--seed", str(w["seed"]), "--requests", str(w["requests"]), "--categories",
                       w["categories"], "--clutter", w["clutter"], "--ambiguity", str(w["ambiguity"]),
                       "--backbone", w["backbone"], "--image-every", str(w["image_every"])])  # fmt: skip
    return path


def _world(data: Path):
    """(World, categories, backbone) when DATA is a testbed world (its generation.json), else None."""
    gen = data / "generation.json"
    if not gen.is_file():
        return None
    g = json.loads(gen.read_text())
    if not g.get("testbed"):
        return None
    from ade_runtime.testbed import World

    live_seed = int(g["seed"]) + 7007  # fresh requests of the same world, never in DATA
    world = World(live_seed, int(g["image_size"]), tuple(g["clutter"]), float(g["ambiguity"]))
    return world, (tuple(g["categories"]) if g.get("categories") else None), g["backbone"]


def certificate(model: Path) -> dict:
    from ade_train.bench.savings import certificate as cert_of

    return cert_of(model)


def critique_vs_trees(model: Path) -> dict:
    """The critique head and its trees baseline on the critique job's held-out split."""
    from ade_train.bench.run import critique_summary

    s = critique_summary(model, model / "export")
    return {"head": s.get("head"), "trees": s.get("trees")}


def run(data: Path, work: Path, fraction: float, seed: int, live_requests: int) -> dict:
    from ade_runtime.offline import oracle_refinements
    from ade_runtime.offline.evaluate import evaluate
    from ade_train.bench.run import ensure_trained

    split = split_dataset(data, work, fraction, seed)
    train_dir, held_dir, model = work / "split" / "train", work / "split" / "held-out", work / "model"
    t0 = time.perf_counter()
    training = ensure_trained(train_dir, model)
    training["wall_s"] = round(time.perf_counter() - t0, 1)
    cert = certificate(model)
    predictors = Predictors.load(model / "export")
    records, rejects = load_records(held_dir, images="none")
    ref = cert["reference"]
    replay = evaluate(
        records, predictors, list(POLICIES), desc="bench-domain replay", ci=0.9, pair_with=(ref,)
    )
    replay.pop("curves", None)
    b8 = replay["policies"]["best_of_8"]
    mark_upper_bounds(replay["policies"], predictors.policy, bool(oracle_refinements(records)))
    for row in replay["policies"].values():
        if "nfe_per_request" in row:
            row["nfe_share_of_best_of_8"] = row["nfe_per_request"] / b8["nfe_per_request"]
            row["gpu_share_of_best_of_8"] = row["gpu_seconds_per_request"] / b8["gpu_seconds_per_request"]
    fig = {
        "data": str(data),
        "split": split,
        "training": training,
        "certificate": cert,
        "critique": critique_vs_trees(model),
        "replay": {"requests": len(records), "rejected": len(rejects), "policies": replay["policies"]},
    }
    world = _world(data)
    if world is not None and live_requests > 0:
        from ade_train.bench.savings import live

        w, cats, backbone = world
        fig["live"] = live(
            predictors, ref, live_requests, w.seed, world=w, categories=cats, backbone=backbone
        )
    return fig


def mark_upper_bounds(policies: dict[str, dict], base, judge_written: bool) -> None:
    """Mark each replayed row whose policy refines as an upper bound when the traces' refinement prompts
    were judge-written (docs/calibration.md); ``base`` is the export's policy (None: the defaults)."""
    from ade_runtime.policy import PolicyConfig, preset

    base = base or PolicyConfig()
    for name, row in policies.items():
        try:
            cfg = base if name == "ade" else preset(name, base)
        except ValueError:  # the replay-only oracles, labelled as such already
            continue
        row["refinement_upper_bound"] = bool(judge_written and cfg.refine and cfg.s_max > 1)


def _training_time(tr: dict) -> str:
    """How long ``make train`` took on the training part: this run, or when the export was reused, the
    time each step took when it ran (``ensure_trained``'s ``measured_steps``)."""
    steps = tr.get("steps") or {}
    if steps:
        return (
            f"`make train` on the training part took {tr['wall_s'] / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items())
            + ")"
        )
    measured = tr.get("measured_steps") or {}
    if measured:
        return (
            f"`make train` on the training part was reused; it took {sum(measured.values()) / 60:.1f} min "
            "when it ran (" + ", ".join(f"{k} {v:.0f} s" for k, v in measured.items()) + ")"
        )
    return "`make train` on the training part was reused (its time was not recorded)"


def _ci(d: dict | None) -> str:
    return "-" if not d else f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def render(fig: dict) -> tuple[list[str], list[dict], list[str]]:
    cert, rp, split = fig["certificate"], fig["replay"], fig["split"]
    ref = cert["reference"]
    eps = cert["target"] if cert["risk"] == "margin" else None
    tr = fig["training"]
    md = [
        f"## A user's new domain: `make bench-domain` on {fig['data']}",
        "",
        f"{split['train_requests']} requests to train on, {split['held_out_requests']} held out (by request id, "
        f"within each category); {_training_time(tr)}.",
        "",
        f"Certificate: **{cert['status']}**, {cert['claim']} against {ref} (chosen on the fit part from "
        f"{cert['reference_chosen_from']}), {cert['n_certify']} certification requests, {cert['n_fit']} to fit"
        + (
            f"; epsilon = {cert['requested_target']:g} was asked, the fit part's plan declared "
            f"epsilon = {cert['target']:g} ("
            + (
                f"epsilon = {cert['requested_target']:g} needs about {cert['requested_n_needed']} "
                "certification requests)"
                if cert.get("requested_n_needed")
                else f"epsilon = {cert['requested_target']:g} is out of reach of the front found on the fit part)"
            )
            if cert.get("requested_target") is not None
            else ""
        )
        + ".",
        "",
        f"Replay on the {rp['requests']} held-out requests (every policy over the same logged attempts, the "
        "calibrated selector; the two oracles select by the judge, an upper bound no deployment has); paired "
        "90% bootstrap intervals.",
        "",
        f"| policy | mean score | - {ref} (90% CI) | - Best-of-8 (90% CI) | NFE share of Bo8 | GPU-s share of Bo8 | verifier calls |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, row in rp["policies"].items():
        if "error" in row:
            md.append(f"| `{name}` | {row['error']} | | | | | |")
            continue
        label = f"`{name}`" + (" (export)" if name == "ade" else " (reference)" if name == ref else "")
        label += " (oracle: judge-selected)" if "oracle" in name else ""
        label += (
            " (upper bound: follows judge-written refinements)" if row.get("refinement_upper_bound") else ""
        )
        md.append(
            f"| {label} | {row['mean_score']:.3f} | {_ci(row.get(f'vs_{ref}'))} | {_ci(row.get('vs_best_of_8'))} | "
            f"{row['nfe_share_of_best_of_8']:.0%} | {row['gpu_share_of_best_of_8']:.0%} | "
            f"{row['verifier_calls_per_request']:.2f} |"
        )
    lv = fig.get("live")
    if lv:
        md += [
            "",
            f"Live on {lv['requests']} fresh requests of the same world ({lv['world']}), no category given:",
            "",
            "| policy | mean score | - reference (90% CI) | - Best-of-8 (90% CI) | NFE share of Bo8 | GPU-s share of Bo8 |",
            "|---|---:|---|---|---:|---:|",
        ]
        b8 = lv["policies"]["best_of_8"]
        for name, row in lv["policies"].items():
            md.append(
                f"| `{name}` | {row['mean_score']:.3f} | {_ci(row['vs_reference'])} | {_ci(row['vs_best_of_8'])} | "
                f"{row['nfe_per_request'] / b8['nfe_per_request']:.0%} | {row['gpu_share_of_best_of_8']:.0%} |"
            )
    crit = fig["critique"]
    head, trees = crit.get("head") or {}, crit.get("trees") or {}
    if head.get("within_auroc") is not None:
        md += ["", f"Critique (held-out split of the critique job): head within-request AUROC "
               f"{head['within_auroc']:.3f}, trees baseline {trees.get('within_auroc') or float('nan'):.3f}."]  # fmt: skip
    md += [
        "",
        "Testbed figures when DATA is a testbed world (synthetic, modelled GPU-seconds), not results on real models.",
    ]

    targets: list[dict] = []
    ade = rp["policies"]["ade"]
    saving = ade["nfe_share_of_best_of_8"] < 1.0
    targets.append(part_target(
        "domain: `make train` exports a certified compute-saving policy, its margin in the model card",
        f"{cert['status']} at {cert['claim']}; export at {ade['nfe_share_of_best_of_8']:.0%} of Bo8's NFE",
        cert["status"] == "certified" and saving, 0.0 if cert["status"] == "certified" else -1.0))  # fmt: skip
    share = ade["nfe_share_of_best_of_8"]
    targets.append(part_target(
        f"domain, replay: the export at <= {NFE_SHARE:.0%} of Best-of-8's NFE on the held-out requests",
        f"{share:.0%}", share <= NFE_SHARE, NFE_SHARE - share))  # fmt: skip
    if eps is not None:
        d = ade["vs_best_of_8"]
        targets.append(part_target(
            f"domain, replay: the held-out mean within the stated margin ({eps:g}) of Best-of-8's",
            _ci(d), d["diff"] >= -eps, d["diff"] + eps))  # fmt: skip
        if lv:
            d = lv["policies"]["ade"]["vs_best_of_8"]
            targets.append(part_target(
                f"domain, live: the mean within the stated margin ({eps:g}) of Best-of-8's",
                _ci(d), d["diff"] >= -eps, d["diff"] + eps))  # fmt: skip
    if head.get("within_auroc") is not None and trees.get("within_auroc") is not None:
        gap = head["within_auroc"] - trees["within_auroc"]
        targets.append(part_target(
            "domain: the critique head is not worse than the trees baseline (held-out within-request AUROC)",
            f"{head['within_auroc']:.3f} vs {trees['within_auroc']:.3f}", gap >= 0, gap))  # fmt: skip
    misses = [f"{t['target']}: measured {t['value']}." for t in targets if not t["met"]]
    return md, targets, misses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ade_train.bench.domain", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="your traces (a judged trace dataset); default: the testbed's world B")
    p.add_argument("--work", help="split, model and report go here (default: checkpoints/domain-<name>)")
    p.add_argument("--out", help="report directory (default: WORK/report); docs/results adds it to the bench")
    p.add_argument("--held-out", type=float, default=HELD_OUT, help="share of requests held out (0.25)")
    p.add_argument("--live-requests", type=int, default=500, help="live requests, testbed worlds only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = Path(args.data) if args.data else ensure_world_b(Path("data/world-b"))
    if not data.is_dir():
        raise SystemExit(
            f"--data {data}: no such directory; pass a judged trace dataset (docs/trace-format-v1.md)"
        )
    work = Path(args.work or f"checkpoints/domain-{data.resolve().name}")
    out = Path(args.out or work / "report")
    try:
        fig = run(data, work, args.held_out, args.seed, args.live_requests)
    except InputError as exc:
        raise SystemExit(f"bench-domain: {exc}") from None
    md, targets, misses = render(fig)
    print(json.dumps({"part": str(write_part(out, "domain", fig, md, targets, misses))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
