"""Agreement between two labelings of the same traces (``ade-judge agree A B``).

Records are matched by request id, attempts by (candidate, round, reasoning_tokens). Over the
attempts both sides labelled: Spearman's rho of the scores (average ranks for ties), Cohen's kappa
of ``pass`` (Cohen 1960: (p_o - p_e) / (1 - p_e)), the pass agreement rate, the mean absolute
score difference, and for flaws a greedy one-to-one matching by box IoU (pairs with IoU > 0, the
highest first) giving the mean IoU of matched flaws, how often matched kinds agree and how many
flaws stayed unmatched on each side. Everything that did not match is counted, never dropped.
A statistic that is undefined (fewer than two pairs, a constant side) is None.
"""

from __future__ import annotations

import os
from typing import Any

from ade_runtime.predictors.regions import box_iou
from ade_runtime.stats import spearman
from ade_runtime.traces import load_records
from ade_runtime.traces.records import Flaw
from ade_runtime.traces.records import Judge as JudgeLabel


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two binary labelings; None when chance agreement is 1 (both constant, equal)."""
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def match_flaws(fa: tuple[Flaw, ...], fb: tuple[Flaw, ...]) -> list[tuple[Flaw, Flaw, float]]:
    """Greedy one-to-one matching of flaws by box IoU (> 0), highest first."""
    cands = sorted(
        ((box_iou(x.box, y.box), i, j) for i, x in enumerate(fa) for j, y in enumerate(fb)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_a, used_b, out = set(), set(), []
    for iou, i, j in cands:
        if iou <= 0 or i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        out.append((fa[i], fb[j], iou))
    return out


def agreement(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
    """All agreement statistics between the labelings in datasets ``a`` and ``b``."""
    recs_a, rej_a = load_records(a, images="none")
    recs_b, rej_b = load_records(b, images="none")
    by_a = {r.id: r for r in recs_a}
    by_b = {r.id: r for r in recs_b}
    pairs: list[tuple[JudgeLabel, JudgeLabel]] = []
    counts = dict.fromkeys(
        ("attempts_only_a", "attempts_only_b", "judged_only_a", "judged_only_b", "judged_neither"), 0
    )
    for rid in by_a.keys() & by_b.keys():
        ga, gb = by_a[rid].attempt_grid(), by_b[rid].attempt_grid()
        counts["attempts_only_a"] += len(ga.keys() - gb.keys())
        counts["attempts_only_b"] += len(gb.keys() - ga.keys())
        for key in ga.keys() & gb.keys():
            ja, jb = ga[key].judge, gb[key].judge
            if ja is not None and jb is not None:
                pairs.append((ja, jb))
            elif ja is not None:
                counts["judged_only_a"] += 1
            elif jb is not None:
                counts["judged_only_b"] += 1
            else:
                counts["judged_neither"] += 1
    sa, sb = [p[0].score for p in pairs], [p[1].score for p in pairs]
    pa, pb = [p[0].passed for p in pairs], [p[1].passed for p in pairs]
    ious: list[float] = []
    same_kind = flaws_a = flaws_b = 0
    for ja, jb in pairs:
        m = match_flaws(ja.flaws, jb.flaws)
        ious.extend(iou for _, _, iou in m)
        same_kind += sum(x.kind == y.kind for x, y, _ in m)
        flaws_a += len(ja.flaws)
        flaws_b += len(jb.flaws)
    n = len(pairs)
    return {
        "a": str(a),
        "b": str(b),
        "pairs": n,
        "spearman": spearman(sa, sb),
        "kappa": cohen_kappa(pa, pb),
        "pass_agreement": (sum(x == y for x, y in zip(pa, pb, strict=True)) / n) if n else None,
        "mean_abs_score_diff": (sum(abs(x - y) for x, y in zip(sa, sb, strict=True)) / n) if n else None,
        "flaws": {
            "a": flaws_a,
            "b": flaws_b,
            "matched": len(ious),
            "mean_iou": (sum(ious) / len(ious)) if ious else None,
            "same_kind": (same_kind / len(ious)) if ious else None,
            "unmatched_a": flaws_a - len(ious),
            "unmatched_b": flaws_b - len(ious),
        },
        "records_only_a": len(by_a.keys() - by_b.keys()),
        "records_only_b": len(by_b.keys() - by_a.keys()),
        **counts,
        "rejects_a": len(rej_a),
        "rejects_b": len(rej_b),
    }


def format_agreement(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    fl = r["flaws"]
    return "\n".join(
        [
            f"{r['pairs']} attempts labelled on both sides",
            f"  spearman(score) {f(r['spearman'])}  kappa(pass) {f(r['kappa'])}  pass agreement "
            f"{f(r['pass_agreement'])}  mean |score diff| {f(r['mean_abs_score_diff'])}",
            f"  flaws: {fl['matched']} matched (mean IoU {f(fl['mean_iou'])}, same kind {f(fl['same_kind'])}), "
            f"unmatched {fl['unmatched_a']} in A / {fl['unmatched_b']} in B",
            f"  unmatched: records {r['records_only_a']} only in A / {r['records_only_b']} only in B; attempts "
            f"{r['attempts_only_a']} / {r['attempts_only_b']}; labelled only in A {r['judged_only_a']}, only in B "
            f"{r['judged_only_b']}, neither {r['judged_neither']}; rejects {r['rejects_a']} / {r['rejects_b']}",
        ]
    )
