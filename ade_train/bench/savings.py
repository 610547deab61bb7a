"""Savings by default (``make bench-savings``): does the export of plain ``make train`` save compute at a
certified margin, live, and can its certificate be shown wrong?

1. ``make train`` on the default data (trained into ``--predictors`` when missing), its certificate read
   from the calibration report: the declared margin, delta, n, the reference chosen on the fit part.
2. **Live**, on ``--live-requests`` fresh requests of a shifted testbed world: the export, its
   reference and Best-of-1/2/4/8, every stack with the same expensive verifier (the testbed's emulated
   VLM reward model) and critique; judged exactly; paired 90% intervals; GPU-seconds count the backbone,
   every check and every verifier call.
3. **Coverage on independent draws**: a pool of fresh requests of the training world (never trained on)
   is replayed once over the whole calibration grid; each draw is an independent sample of the
   calibration size from half of it, certified as calibration does (the best Best-of-N on the fit part,
   the front there, fixed-sequence testing on the certify part), and its choice is judged against the
   truth: that half's means (the draws' own population) and, separately, the other, disjoint half.
   The calibrated map is the export's, fixed across draws (it is fitted on a fit part, which the test
   never reads, so the thresholds' test is what is checked).

Testbed figures (synthetic world, modelled GPU-seconds), not results on real models.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ade_runtime.offline.intervals import paired_difference
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.traces import load_records
from ade_train.bench.parts import PARTS_DIR, part_target, write_part

EPS_LIVE = 0.01  # the live target: the interval's lower end above -0.01 against the reference
SHARE = 0.25  # of Best-of-8's GPU-seconds
CALLS = 1 / 3  # of Best-of-8's expensive-verifier calls
SIZES = (1, 2, 4, 8)
CHECK_MARGINS = (0.03, 0.05)  # coverage is also checked at these wider margins (a procedure check)


def certificate(pred_dir: Path) -> dict:
    """The export's certificate as its calibration report states it."""
    report = json.loads((pred_dir / "calibration_report.json").read_text())
    cert = report["certificate"]
    c = cert["certificate"]
    return {
        "status": cert["status"],
        "claim": c["claim"],
        "risk": c["spec"]["form"],
        "target": c["spec"]["target"],
        "delta": c["spec"]["delta"],
        "n_fit": c["n_select"],
        "n_certify": c["n_certify"],
        "p_value": c["p_value"],
        "power_planned": c.get("power"),
        "requested_target": c.get("requested_target"),  # set when the fit part's plan widened the margin
        "requested_n_needed": c.get("requested_n_needed"),
        "n_needed": c.get("n_needed"),
        "reference": report["reference"]["policy"],
        "reference_chosen_from": report["reference"].get("chosen_from"),
        "text": cert["text"],
        "policy": cert["policy"],
    }


def live(predictors: Predictors, reference: str, n: int, seed: int, *, world=None, categories=None,
         backbone: str = "bagel") -> dict:  # fmt: skip
    """The export, its reference and Best-of-N live on the same ``n`` fresh requests (paired): of a shifted
    world by default, or of ``world`` (a testbed ``World``) with ``categories`` and ``backbone``'s costs."""
    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.loop import AdaptiveEditor
    from ade_runtime.overhead import overhead_for
    from ade_runtime.progress import progress
    from ade_runtime.testbed import SyntheticBackbone, World, judge_attempt, online_scores
    from ade_runtime.testbed.costs import get_cost
    from ade_runtime.testbed.imageio import make_image
    from ade_runtime.testbed.reward import EmulatedRewardModel

    label = f"testbed seed {seed}, clutter 2-8 (shifted)"
    if world is None:
        world = World(seed=seed, clutter=(2, 8))
    else:
        label = f"testbed seed {world.seed}, clutter {world.clutter[0]}-{world.clutter[1]}, {backbone} costs"
    rng = np.random.default_rng(seed)
    reqs = [world.sample_request(rng, categories) for _ in range(n)]
    cost = get_cost(backbone)
    ov = overhead_for(backbone, critique=predictors.critique is not None, seconds_per_nfe=cost.s_per_nfe)
    names = ["ade", *(f"best_of_{k}" for k in SIZES)]
    out: dict = {"requests": n, "world": label, "policies": {}}
    scores: dict[str, list[float]] = {}
    for name in names:
        editor = AdaptiveEditor(
            SyntheticBackbone(backbone), predictors, policy=name, scorer=online_scores, seed=seed,
            verifier=EmulatedRewardModel(),
        )  # fmt: skip
        s, secs, calls, nfe = [], [], [], []
        for i, r in enumerate(progress(reqs, desc=f"savings live {name}")):
            src = make_image(r.source, r.source, world.size)
            res = editor.edit(EditRequest(src, r.instruction, f"live-{i}"))  # no category: production
            j = judge_attempt(src, res.image, r.instruction) if res.image is not None else None
            s.append(j.score if j else 0.0)
            done = [a for a in res.attempts if a.output is not None and a.output.image is not None]
            prev = [a for a in res.attempts if a.output is not None and a.output.preview_image is not None]
            checks = len(done) * (ov.score_s + ov.critique_s) + len(prev) * ov.preview_s
            secs.append(res.backbone_seconds + checks + res.verifier_seconds)
            calls.append(len(res.verifier_calls))
            nfe.append(res.nfe)
        scores[name] = s
        out["policies"][name] = {
            "mean_score": float(np.mean(s)),
            "gpu_seconds_per_request": float(np.mean(secs)),
            "nfe_per_request": float(np.mean(nfe)),
            "verifier_calls_per_request": float(np.mean(calls)),
        }
    b8 = out["policies"]["best_of_8"]
    for name, row in out["policies"].items():
        row["vs_reference"] = paired_difference(scores[name], scores[reference]).to_dict()
        row["vs_best_of_8"] = paired_difference(scores[name], scores["best_of_8"]).to_dict()
        row["gpu_share_of_best_of_8"] = row["gpu_seconds_per_request"] / b8["gpu_seconds_per_request"]
        calls = b8["verifier_calls_per_request"]  # 0 when the export's calibration does not read the verifier
        row["verifier_share_of_best_of_8"] = row["verifier_calls_per_request"] / calls if calls else None
    out["best_of_n_steps"] = {
        f"{b}-{a}": paired_difference(scores[f"best_of_{b}"], scores[f"best_of_{a}"]).to_dict()
        for a, b in zip(SIZES, SIZES[1:], strict=False)
    }
    out["reference"] = reference
    return out


def coverage(predictors: Predictors, pool_dir: Path, n_calibration: int, certify_fraction: float, spec, draws: int,
             seed: int, max_margin: float | None = None) -> dict:  # fmt: skip
    """Independent calibration draws from one half of a fresh pool; truth on it and on the other half."""
    from ade_runtime.offline import replay_record
    from ade_runtime.policy import preset
    from ade_train.bench.certification import grid_configs, policy_matrix
    from ade_train.calibrate.coverage import draw_coverage

    t0 = time.perf_counter()
    records, _ = load_records(pool_dir, images="header")
    records.sort(key=lambda r: r.id)
    configs = grid_configs(records, predictors)
    m = policy_matrix(records, predictors, configs, "best_of_8")
    base = predictors.policy
    refs, ref_cost = [], []
    for k in SIZES:  # every Best-of-N a fit part may pick as the reference, with the same selector
        cfg = preset(f"best_of_{k}", base)
        outs = [
            replay_record(r, cfg, m["signals"][r.id].confidence, overhead=m["overhead"],
                          first_stage=m["signals"][r.id].first_stage)
            for r in records
        ]  # fmt: skip
        refs.append([o.score for o in outs])
        ref_cost.append([o.seconds for o in outs])
    refs_a, cost_a = np.array(refs).T, np.array(ref_cost).T
    half = len(records) // 2
    a, b = slice(0, half), slice(half, None)
    rows = []
    # the procedure as shipped first (the asked margin, widened per draw by its fit part's plan up to
    # max_margin); then fixed margins, which check the test itself where draws do certify (a check of
    # the test's validity, not a claim anyone exports)
    runs = [(spec.target, max_margin, True)] + [
        (mg, None, False) for mg in dict.fromkeys([spec.target, *CHECK_MARGINS])
    ]
    for margin, widen, shipped in runs:
        res = draw_coverage(
            spec.with_target(margin), m["scores"][a], refs_a[a], m["seconds"][a], cost_a[a],
            n_calibration=n_calibration, certify_fraction=certify_fraction, draws=draws,
            truth_scores=m["scores"][b], truth_references=refs_a[b], seed=seed, max_margin=widen,
        )  # fmt: skip
        res["reference_chosen"] = {f"best_of_{SIZES[j]}": v for j, v in res["reference_chosen"].items()}
        res["declared"], res["margin"] = shipped, margin
        rows.append(res)
    out = dict(rows[0])
    out.update(
        rows=rows, n_settings=len(configs), pool=str(pool_dir), seconds=round(time.perf_counter() - t0, 1)
    )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _ci(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def _setting(policy: dict | None) -> str:
    """The exported setting in one sentence, saying whether it refines and why not."""
    if not policy:
        return "The export is the reference policy."
    keys = ("tau_high", "tau_low", "s_max", "card_quantile", "prune_threshold", "verify_band")
    text = "The exported setting: " + ", ".join(f"{k} {policy.get(k)}" for k in keys if k in policy)
    if policy.get("refine"):
        return text + "; refinement rounds with the critique's feedback."
    return text + (
        "; fresh samples only, no refinement: the default data's refinement rounds follow judge-written "
        "prompts, which the search does not credit (docs/calibration.md)."
    )


def render(fig: dict) -> tuple[list[str], list[dict], list[str]]:
    cert, lv, cov = fig["certificate"], fig["live"], fig.get("coverage")
    ade, ref = lv["policies"]["ade"], lv["reference"]
    md = [
        "## Savings by default: `make train`'s export, live (headline)",
        "",
        f"The export of plain `make train` on the default data: **{cert['status']}**, {cert['claim']} against "
        f"{ref} (the best Best-of-N on the fit part: {cert['reference_chosen_from']}), on {cert['n_certify']} "
        f"certification requests ({cert['n_fit']} to fit; planned power {cert['power_planned']})."
        + (
            f" epsilon = {cert['requested_target']:g} was asked; the fit part's power plan declared "
            f"epsilon = {cert['target']:g} before the certification requests were read (epsilon = "
            f"{cert['requested_target']:g} needs about {cert['requested_n_needed']} certification requests)."
            if cert.get("requested_target") is not None
            else ""
        ),
        "",
        _setting(cert.get("policy")),
        "",
        f"Live on {lv['requests']} fresh requests of a shifted world ({lv['world']}), no category given, the "
        "emulated VLM reward model in every stack; judged exactly; paired 90% bootstrap intervals.",
        "",
        "| policy | mean score | - reference (90% CI) | - Best-of-8 (90% CI) | GPU-s / request | share of Bo8 GPU-s | verifier calls (share of Bo8) |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, row in lv["policies"].items():
        label = f"`{name}`" + (" (export)" if name == "ade" else " (reference)" if name == ref else "")
        md.append(
            f"| {label} | {row['mean_score']:.3f} | {_ci(row['vs_reference'])} | {_ci(row['vs_best_of_8'])} | "
            f"{row['gpu_seconds_per_request']:.1f} | {row['gpu_share_of_best_of_8']:.0%} | "
            f"{row['verifier_calls_per_request']:.2f} ({_pct(row['verifier_share_of_best_of_8'])}) |"
        )
    md += ["", "Best-of-N steps (larger N minus smaller N, same requests): " + ", ".join(
        f"N {k}: {_ci(v)}" for k, v in lv["best_of_n_steps"].items()) + "."]  # fmt: skip
    if cov:
        md += [
            "",
            "### Can the certificate be wrong? Independent calibration draws",
            "",
            f"{cov['draws']} independent draws of {cov['n_calibration']} requests ({cov['n_certify']} certify) from a "
            f"pool of {cov['n_pool']} fresh requests of the training world, {cov['n_settings']} settings replayed "
            f"once; the reference picked per draw on its fit part ({cov['reference_chosen']}). A certified "
            "choice is wrong when its true mean misses the claim: truth = the pool the draws come from, and "
            f"separately a disjoint {cov['n_disjoint']}-request half.",
            "",
            "| claim | draws that certify | P(certified and wrong), pool | P(certified and wrong), disjoint | delta | mean compute share (all draws) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in cov.get("rows", [cov]):
            label = r["claim"] + (" (procedure check)" if not r.get("declared", True) else " (as shipped)")
            if r.get("max_margin") is not None:
                label += (
                    f", widened per draw up to {r['max_margin']:g} (declared: "
                    + ", ".join(f"{float(k):g} x{v}" for k, v in r["declared_targets"].items())
                    + ")"
                )
            md.append(
                f"| {label} | {r['certified_share']:.0%} | {r['certified_and_wrong']:.3f} | "
                f"{r['certified_and_wrong_disjoint']:.3f} | {r['delta']:g} | {r['mean_compute_share']:.0%} |"
            )
    targets, misses = [], []
    certified = cert["status"] == "certified"
    asked = cert.get("requested_target") or cert["target"]
    at_asked = certified and cert["target"] <= asked + 1e-12
    targets.append(part_target(
        f"savings: `make train` exports a certified saving at the default margin epsilon = {asked:g}",
        f"{cert['status']} at epsilon = {cert['target']:g} on {cert['n_certify']} requests",
        at_asked, 0.0 if at_asked else asked - cert["target"]))  # fmt: skip
    lo = ade["vs_reference"]["lo"]
    targets.append(part_target(
        f"savings, live: the export within {EPS_LIVE} of the reference {ref} (90% CI lower end > -{EPS_LIVE})",
        f"{ade['mean_score']:.3f} vs {lv['policies'][ref]['mean_score']:.3f}, {_ci(ade['vs_reference'])}",
        lo > -EPS_LIVE, lo + EPS_LIVE))  # fmt: skip
    share = ade["gpu_share_of_best_of_8"]
    targets.append(part_target(
        f"savings, live: the export spends <= {SHARE:.0%} of Best-of-8's GPU-seconds (checks and verifier included)",
        f"{share:.1%}", share <= SHARE, SHARE - share))  # fmt: skip
    vshare = ade["verifier_share_of_best_of_8"]
    if vshare is not None:
        targets.append(part_target(
            "savings, live: <= 1/3 of Best-of-8's expensive-verifier calls",
            f"{ade['verifier_calls_per_request']:.2f} per request ({vshare:.0%})", vshare <= CALLS, CALLS - vshare))  # fmt: skip
    worst = min(v["hi"] for v in lv["best_of_n_steps"].values())
    targets.append(part_target(
        "savings, live: Best-of-N by ADE's selector non-decreasing in N (1, 2, 4, 8) within its interval",
        ", ".join(f"N={k}: {lv['policies'][f'best_of_{k}']['mean_score']:.3f}" for k in SIZES),
        worst >= 0.0, worst))  # fmt: skip
    if cov:
        w = max(r["certified_and_wrong"] for r in cov.get("rows", [cov]))
        targets.append(part_target(
            f"savings: P(certified and wrong) <= delta over >= 100 independent draws ({cov['draws']})",
            "; ".join(
                f"margin {r.get('margin', '?')}: {r['certified_and_wrong']:.3f} (disjoint "
                f"{r['certified_and_wrong_disjoint']:.3f}), {r['certified_share']:.0%} of draws certify"
                for r in cov.get("rows", [cov])
            ),
            w <= cov["delta"] and cov["draws"] >= 100, cov["delta"] - w))  # fmt: skip
    for t in targets:
        if not t["met"]:
            misses.append(f"{t['target']}: measured {t['value']}.")
    return md, targets, misses


def main(argv: list[str] | None = None) -> int:
    from ade_train.bench.run import ensure_data, ensure_trained
    from ade_train.calibrate.config import load_config

    p = argparse.ArgumentParser(
        prog="python -m ade_train.bench.savings", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", default="data/sample")
    p.add_argument(
        "--predictors", default="checkpoints/bench", help="make train's OUT (trained when missing)"
    )
    p.add_argument("--out", default="docs/results")
    p.add_argument("--live-requests", type=int, default=500)
    p.add_argument("--pool", default="data/coverage-pool", help="fresh requests for the coverage draws")
    p.add_argument("--pool-requests", type=int, default=2000)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-coverage", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite the part from its saved figures")
    args = p.parse_args(argv)
    if args.render_only:
        doc = json.loads((Path(args.out) / PARTS_DIR / "savings.json").read_text())
        md, targets, misses = render(doc["figures"])
        path = write_part(args.out, "savings", doc["figures"], md, targets, misses, meta=doc["meta"])
        print(json.dumps({"part": str(path)}))
        return 0
    data, pred_dir = Path(args.data), Path(args.predictors)
    ensure_data(data, ["--seed", str(args.seed)])
    ensure_trained(data, pred_dir)
    predictors = Predictors.load(pred_dir / "export")
    cert = certificate(pred_dir)
    fig = {"certificate": cert}
    fig["live"] = live(predictors, cert["reference"], args.live_requests, args.seed + 2002)
    if not args.no_coverage:
        ensure_data(Path(args.pool), ["--seed", str(args.seed + 4004), "--requests", str(args.pool_requests)])
        cfg = load_config()
        n_cal = cert["n_fit"] + cert["n_certify"]
        fig["coverage"] = coverage(
            predictors,
            Path(args.pool),
            n_cal,
            cert["n_certify"] / n_cal,
            cfg.risk_spec.with_target(cert["requested_target"] or cert["target"]),  # the margin asked for
            args.draws,
            args.seed,
            max_margin=cfg.max_margin,
        )
    md, targets, misses = render(fig)
    fig["headline"] = True
    print(json.dumps({"part": str(write_part(args.out, "savings", fig, md, targets, misses))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
