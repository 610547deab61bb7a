"""CARD on phrasing it never saw (issue 22): budgets from the instruction and image alone.

``make train`` (CARD's part) learns from the sample data, phrased in the training families of
``ade_runtime.testbed.phrasing`` (grammar, polite, casual). This part measures the exported budget
predictor on fresh requests of the same world (a dataset training never read) twice:

- **standard**: the requests as generated (training families, new requests);
- **held-out phrasing**: the same requests rewritten in ``HELDOUT_FAMILY`` ("I'd like you to ...", joiners
  and synonyms no training text used, a few typos). Each twin keeps its request's image, labels and
  logged attempts: the testbed's outcomes follow the parsed edits, never their wording
  (``phrasing.normalize``), so only what CARD reads changes and every comparison is paired.

Arms (no category label reaches any of them, as in production): the export (CARD, or the
per-category prior fed by its category classifier, whichever won on validation), the alternative
``make train`` kept (``OUT/alternatives``) and a constant budget (the train split's all-categories
row). Each gets, per request, the censored NLL of its budget distribution (CARD's training loss, on
loop-order labels) and, replayed over the logged attempts with the export's stop rule and no
thinking, the judge score and GPU-seconds at its budget. Paired 90% bootstrap intervals: held-out vs
standard for the export, export vs constant and vs the alternative on the held-out phrasing, and per
category. Compound requests (several edits) check the rule that their budget is at least each
clause's (``BudgetPrediction.parts``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ade_runtime.images import open_rgb
from ade_runtime.offline import replay_signals
from ade_runtime.offline.intervals import paired_by_id
from ade_runtime.offline.signals import critique_signals, record_signals
from ade_runtime.overhead import overhead_for, seconds_per_nfe, verifier_seconds
from ade_runtime.policy import PolicyConfig, budget
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.predictors.card import CardPredictor
from ade_runtime.testbed.instructions import parse
from ade_runtime.testbed.phrasing import HELDOUT_FAMILY, TRAINING_FAMILIES, rephrase
from ade_runtime.traces import EditRecord, TraceDataset
from ade_train.bench.card_checks import ade_edit_check, gbm_validation
from ade_train.bench.parts import part_target, write_part
from ade_train.card.metrics import censored_nll

LEVEL = 0.9
TEXTS = ("standard", "heldout")


def twin(record: EditRecord, seed: int = 0) -> EditRecord:
    """``record`` with its instruction rewritten in the held-out phrasing family (same edits)."""
    edits = parse(record.instruction)
    rng = np.random.default_rng([seed, int.from_bytes(record.id.encode()[-8:].rjust(8, b"\0"), "little")])
    return replace(record, instruction=rephrase(edits, HELDOUT_FAMILY, rng))


TOKEN_ARMS = ("never", "always", "card")


def token_line(tokens: dict, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """CARD's token decision against the line from "never think" to "always think" in score vs
    GPU-seconds: per request, ``card - (never + t * (always - never))`` with ``t`` where CARD's mean
    GPU-seconds fall between the two; a paired bootstrap interval of its mean (>= 0: on or above)."""
    ids = sorted(tokens["card"]["score"])
    mean = {
        k: {m: float(np.mean([tokens[k][m][i] for i in ids])) for m in ("score", "seconds")} for k in tokens
    }
    span = mean["always"]["seconds"] - mean["never"]["seconds"]
    t = 0.0 if span <= 0 else (mean["card"]["seconds"] - mean["never"]["seconds"]) / span
    line = {
        i: tokens["never"]["score"][i] + t * (tokens["always"]["score"][i] - tokens["never"]["score"][i])
        for i in ids
    }
    think = sum(tokens["card"]["seconds"][i] != tokens["never"]["seconds"][i] for i in ids) / max(1, len(ids))
    return {
        "arms": mean,
        "position_on_line": t,
        "card_minus_line": paired_by_id(tokens["card"]["score"], line, level=level, seed=seed).to_dict(),
        "always_minus_never": {
            m: paired_by_id(tokens["always"][m], tokens["never"][m], level=level, seed=seed).to_dict()
            for m in ("score", "seconds")
        },
        "requests_whose_cost_changed": think,
    }


def _label(rec: EditRecord, levels: list[int], s_max: int, unit: str) -> tuple[int, int, bool] | None:
    lab = budget.loop_label(rec, levels, s_max, unit)
    if lab is None:
        return None
    cf = budget.level_index(levels, lab.length + 1) if lab.censored else lab.level_index
    return lab.level_index, cf, bool(lab.censored)


def _nll(probs: list[float], label: tuple[int, int, bool]) -> float:
    logp = torch.tensor([probs], dtype=torch.float64).clamp_min(1e-12).log()
    lv, cf, c = label
    return float(censored_nll(logp, torch.tensor([lv]), torch.tensor([cf]), torch.tensor([c]))[0])


def _constant(card: CardPredictor, alt: CardPredictor | None) -> list[float]:
    for p in (card, alt):
        table = getattr(getattr(p, "config", None), "category_probs", None)
        if table and "*" in table:
            return list(table["*"])
    raise ValueError(
        "neither CARD artifact carries the all-categories row ('*'); re-export with ade-train card"
    )


# long function: every arm on both phrasings, replayed and paired in one table
def run(
    records: list[EditRecord],
    predictors: Predictors,
    alternative: CardPredictor | None,
    *,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of this part on judged testbed ``records`` (see the module docstring)."""
    t0 = time.perf_counter()
    card = predictors.card
    if card is None:
        raise ValueError("the export has no CARD artifact; run `make train-card` first")
    cfg = card.config
    unit = budget.cost_unit(records)
    s_max = int(cfg.label_s_max or PolicyConfig().s_max)
    labels = {r.id: _label(r, list(cfg.levels), s_max, unit) for r in records}
    records = [r for r in records if labels[r.id] is not None]
    policy = replace(predictors.policy or PolicyConfig(), use_card=True)
    q = policy.card_quantile
    overhead = overhead_for(
        records[0].backbone,
        critique=predictors.critique is not None,
        seconds_per_nfe=seconds_per_nfe(records),
        verify_s=verifier_seconds(records),
    )
    constant = _constant(card, alternative)
    arms: dict[str, Any] = {"export": card, "constant": None}
    if alternative is not None:
        arms["alternative"] = alternative
    const_pred = card._prediction(constant, [1.0] * len(cfg.token_levels), source="constant")
    never = min(a.reasoning_tokens for r in records for a in r.attempts)
    always = max(a.reasoning_tokens for r in records for a in r.attempts)
    tokens: dict[str, dict[str, dict[str, float]]] = {k: {"score": {}, "seconds": {}} for k in TOKEN_ARMS}
    per: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    compound = {"n": 0, "rule_holds": 0, "raised": 0}
    for rec in records:
        cp, rf = critique_signals(rec, predictors.critique) if predictors.critique is not None else ({}, None)
        sig = record_signals(rec, predictors.calibrator, critique_p=cp, refine_ok=rf)
        image = open_rgb(rec.resolve(rec.source_image))
        texts = {"standard": rec, "heldout": twin(rec, seed)}
        for text, r in texts.items():
            for arm, pred in arms.items():
                p = const_pred if pred is None else pred.predict(r.instruction, image)
                b = max(1, int(p.quantile(q, policy.card_cap)))
                out = replay_signals(rec, policy, sig, (b, never), overhead=overhead)
                row = per[arm][text]
                row.setdefault("nll", {})[rec.id] = _nll(p.probs, labels[rec.id])
                row.setdefault("score", {})[rec.id] = out.score
                row.setdefault("seconds", {})[rec.id] = out.seconds
                row.setdefault("budget", {})[rec.id] = float(b)
                if arm == "export" and text == "standard":  # the token decision, at the export's budgets
                    for name, t in (("never", never), ("always", always), ("card", p.reasoning_tokens)):
                        o = out if t == never else replay_signals(rec, policy, sig, (b, t), overhead=overhead)
                        tokens[name]["score"][rec.id] = o.score
                        tokens[name]["seconds"][rec.id] = o.seconds
                if arm == "export" and p.parts:
                    compound["n"] += 1
                    alone = max(part.quantile(q, policy.card_cap) for part in p.parts)
                    compound["rule_holds"] += int(b >= alone)
                    whole = replace(p, parts=[]).quantile(q, policy.card_cap)
                    compound["raised"] += int(whole < alone)
    cats = {r.id: str(r.category) for r in records}

    def pair(a: dict, b: dict, key: str, ids: set | None = None) -> dict:
        x = a[key] if ids is None else {i: v for i, v in a[key].items() if i in ids}
        return paired_by_id(x, b[key], level=level, seed=seed).to_dict()

    summary = {
        arm: {
            text: {k: float(np.mean(list(v.values()))) for k, v in per[arm][text].items()} for text in TEXTS
        }
        for arm in per
    }
    comparisons = {
        "export_heldout_vs_standard": {
            k: pair(per["export"]["heldout"], per["export"]["standard"], k)
            for k in ("nll", "score", "seconds")
        },
    }
    for other in ("constant", "alternative"):
        if other in per:
            for text in TEXTS:
                comparisons[f"export_vs_{other}_{text}"] = {
                    k: pair(per["export"][text], per[other][text], k) for k in ("nll", "score", "seconds")
                }
    by_category = {}
    for c in sorted(set(cats.values())):
        ids = {i for i, v in cats.items() if v == c}
        row = {"n": len(ids)}
        for text in TEXTS:
            for arm in per:
                row[f"{arm}_{text}_nll"] = float(np.mean([per[arm][text]["nll"][i] for i in ids]))
            row[f"export_vs_constant_{text}_nll"] = pair(
                per["export"][text], per["constant"][text], "nll", ids
            )
        row["heldout_vs_standard_nll"] = pair(per["export"]["heldout"], per["export"]["standard"], "nll", ids)
        by_category[c] = row
    return {
        "n_requests": len(records),
        "tokens": token_line(tokens, level, seed),
        "quantile": q,
        "level": level,
        "export_source": "category_prior" if cfg.is_prior else "card",
        "alternative_source": None
        if alternative is None
        else ("category_prior" if alternative.config.is_prior else "card"),
        "compound": compound,
        "summary": summary,
        "comparisons": comparisons,
        "by_category": by_category,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _d(pd: dict, digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}"
    small = ", small sample" if pd.get("small_sample") else ""
    verdict = {"win": "higher", "loss": "lower"}.get(
        pd["verdict"], pd["verdict"]
    )  # a - b, whatever is better
    return f"{f.format(pd['diff'])} [{f.format(pd['lo'])}, {f.format(pd['hi'])}] ({verdict}{small})"


def targets_of(fig: dict) -> list[dict]:
    comp = fig["comparisons"]
    hs = comp["export_heldout_vs_standard"]["nll"]
    vc = comp["export_vs_constant_heldout"]["nll"]
    cp = fig["compound"]
    rows = []
    ae = fig.get("ade_edit")
    if ae:
        rows.append(
            part_target(
                "ade-edit without --category: an easy and a hard request get different budgets (make train's "
                "export), the trace says where each came from",
                f"easy {ae['easy']['budget']} ({ae['easy']['budget_source']}), hard {ae['hard']['budget']} "
                f"({ae['hard']['budget_source']})",
                bool(ae["differ"]) and all(ae[k]["budget_source"] for k in ("easy", "hard")),
                0.0 if ae["differ"] else 1.0,
            )
        )
    tk = fig.get("tokens")
    if tk:
        d = tk["card_minus_line"]
        rows.append(
            part_target(
                "CARD's token decision on or above the never-always line (score vs GPU-seconds, paired)",
                f"{_d(d)}; thinks on {tk['requests_whose_cost_changed']:.0%} of requests",
                d["hi"] >= 0.0,
                max(0.0, -d["hi"]),
            )
        )
    return rows + [
        part_target(
            "CARD on the held-out phrasing no worse in NLL than on the standard requests beyond its interval",
            _d(hs),
            hs["lo"] <= 0.0,  # the increase is not significant: zero lies in (or above) its interval
            max(0.0, hs["lo"]),
        ),
        part_target(
            "CARD on the held-out phrasing beats a constant budget (NLL, paired)",
            _d(vc),
            vc["hi"] < 0.0,
            max(0.0, vc["hi"]),
        ),
        part_target(
            "a compound instruction gets at least the budget of its hardest clause",
            f"{cp['rule_holds']} of {cp['n']} compound requests",
            cp["rule_holds"] == cp["n"],
            float(cp["n"] - cp["rule_holds"]),
        ),
    ]


def render(fig: dict) -> tuple[list[str], list[dict], list[str]]:
    s, comp = fig["summary"], fig["comparisons"]
    n = fig["n_requests"]
    small = " (small sample)" if n < 300 else ""
    md = [
        "## CARD on phrasing it never saw (testbed)",
        "",
        f"{n} fresh requests of the sample's world{small}, never read by training, each in its generated "
        f"phrasing (training families: {', '.join(TRAINING_FAMILIES)}) and rewritten in the held-out family "
        f"`{HELDOUT_FAMILY}` (first-person wishes, joiners and synonyms no training text used, a few "
        "typos). A twin keeps its request's image, labels and logged attempts: testbed outcomes follow the "
        "parsed edits, not their wording, so every comparison is paired. No arm reads a category label. "
        f"Exported: **{fig['export_source']}**; alternative: {fig['alternative_source'] or 'none'}. "
        f"Replay: the export's stop rule, budget at quantile {fig['quantile']}, no thinking.",
        "",
        "| arm | NLL standard | NLL held-out | budget std / held-out | score std / held-out | GPU-s std / held-out |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in s.items():
        a, b = row["standard"], row["heldout"]
        md.append(
            f"| {arm} | {a['nll']:.3f} | {b['nll']:.3f} | {a['budget']:.2f} / {b['budget']:.2f} | "
            f"{a['score']:.3f} / {b['score']:.3f} | {a['seconds']:.1f} / {b['seconds']:.1f} |"
        )
    md += ["", "Paired differences (90% bootstrap; NLL: lower is better):", ""]
    md.append("| comparison | NLL | score | GPU-seconds |")
    md.append("|---|---|---|---|")
    for name, c in comp.items():
        md.append(f"| {name.replace('_', ' ')} | {_d(c['nll'])} | {_d(c['score'])} | {_d(c['seconds'], 2)} |")
    g = fig.get("validation")
    if g:
        md += [
            "",
            f"Validation NLL ({g['n_val']} requests of `make train`'s validation split; what chose the "
            f"export): CARD {g['card_val_nll']:.4f}, per-category prior with the category inferred "
            f"{g['inferred_prior_val_nll']:.4f}, constant {g['constant_val_nll']:.4f}, gradient-boosted "
            f"trees on CARD's features {g['gbm_best_val_nll']:.4f} (best of {len(g['gbm'])} settings; not "
            "shippable in the torch-only runtime, so it is a yardstick: it would have to win to be ported).",
        ]
    md += [
        "",
        f"![CARD per category, standard and held-out phrasing]({PLOT})",
        "",
        "Per category (NLL of the export, standard / held-out; export minus constant on the held-out "
        "phrasing; held-out minus standard):",
        "",
        "| category | n | export | constant | export - constant (held-out) | held-out - standard |",
        "|---|---|---|---|---|---|",
    ]
    for c, row in fig["by_category"].items():
        md.append(
            f"| {c} | {row['n']} | {row['export_standard_nll']:.3f} / {row['export_heldout_nll']:.3f} | "
            f"{row['constant_standard_nll']:.3f} / {row['constant_heldout_nll']:.3f} | "
            f"{_d(row['export_vs_constant_heldout_nll'])} | {_d(row['heldout_vs_standard_nll'])} |"
        )
    cp = fig["compound"]
    md += [
        "",
        f"Compound instructions: {cp['n']} (both phrasings); the budget is at least the hardest clause's in "
        f"{cp['rule_holds']}; the clause rule raised the whole instruction's budget in {cp['raised']}.",
    ]
    ae = fig.get("ade_edit")
    if ae:
        md += [
            "",
            "`ade-edit` without `--category`, `make train`'s export (testbed backbone, emulated verifier):",
            "",
        ]
        md += [
            "| request | instruction | budget | source | inferred category | clause budgets | CARD used by the policy |"
        ]
        md += ["|---|---|---|---|---|---|---|"]
        for k in ("easy", "hard"):
            e = ae[k]
            md.append(
                f"| {k} ({e['category_of_the_request']}) | {e['instruction']} | {e['budget']} | "
                f"{e['budget_source']} | {e['category_inferred'] or '-'} | {e['compound_parts'] or '-'} | "
                f"{e['use_card']} |"
            )
    targets = targets_of(fig)
    misses = [f"{t['target']}: measured {t['value']}." for t in targets if not t["met"]]
    return md, targets, misses


PLOT = "card_phrasing.png"  # in OUT (docs/results), beside report.md which links it


def plot(fig: dict, path: Path) -> None:
    """Per-category NLL: the export on standard and held-out phrasing, and the constant budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(fig["by_category"])
    x = np.arange(len(cats))
    f, ax = plt.subplots(figsize=(10, 3.6))
    for k, (key, label) in enumerate(
        (
            ("export_standard_nll", "CARD, standard phrasing"),
            ("export_heldout_nll", f"CARD, held-out '{HELDOUT_FAMILY}' phrasing"),
            ("constant_standard_nll", "constant budget"),
        )
    ):
        ax.bar(x + (k - 1) * 0.27, [fig["by_category"][c][key] for c in cats], 0.27, label=label)
    ax.set_xticks(x, cats, rotation=30)
    ax.set_ylabel("NLL of the need (lower is better)")
    ax.set_title(f"CARD per category on {fig['n_requests']} fresh testbed requests (testbed figures)")
    ax.legend(fontsize=8)
    f.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    f.savefig(path, dpi=110)
    plt.close(f)


def main(argv: list[str] | None = None) -> int:
    from ade_train.bench.run import ensure_data, ensure_trained

    p = argparse.ArgumentParser(
        prog="python -m ade_train.bench.card_phrasing", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", default="data/sample", help="make train's DATA (generated when missing)")
    p.add_argument(
        "--predictors", default="checkpoints/bench", help="make train's OUT (trained when missing)"
    )
    p.add_argument(
        "--heldout", default="data/phrasing-heldout", help="fresh requests (generated when missing)"
    )
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--out", default="docs/results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-only", action="store_true", help="rewrite the part from its saved figures")
    args = p.parse_args(argv)
    if args.render_only:
        from ade_train.bench.parts import PARTS_DIR

        doc = json.loads((Path(args.out) / PARTS_DIR / "card_phrasing.json").read_text())
        md, targets, misses = render(doc["figures"])
        write_part(args.out, "card_phrasing", doc["figures"], md, targets, misses, meta=doc["meta"])
        return 0
    data, pred_dir, held = Path(args.data), Path(args.predictors), Path(args.heldout)
    ensure_data(data, ["--seed", str(args.seed)])
    ensure_trained(data, pred_dir)
    # another seed of the same world: requests training never read. Attempt images are not stored (the
    # stop rule then reads the cheap scores and the verifier, the calibration's fallback, in every arm)
    ensure_data(
        held,
        ["--seed", str(args.seed + 6006), "--requests", str(args.requests), "--image-every", "100000"],
    )
    predictors = Predictors.load(pred_dir / "export")
    alt = None
    for name in ("card", "category_prior"):
        d = pred_dir / "alternatives" / name
        if (d / "card.json").exists():
            alt = CardPredictor.from_pretrained(d)
    records = list(TraceDataset(held))
    fig = run(records, predictors, alt, seed=args.seed)
    fig["validation"] = gbm_validation(data, pred_dir)
    fig["ade_edit"] = ade_edit_check(pred_dir / "export", pred_dir / "ade-edit-check")
    plot(fig, Path(args.out) / PLOT)
    md, targets, misses = render(fig)
    path = write_part(args.out, "card_phrasing", fig, md, targets, misses)
    print(json.dumps({"part": str(path), "seconds": fig["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
