"""What ``ade-train card`` exports, and the two CARD thresholds it calibrates on the calibration split.

1. **CARD or the per-category prior.** The trained CARD is exported only when its validation NLL beats
   the per-category prior's (the fair baseline: category is known to every request of the testbed);
   otherwise the per-category prior is exported in the same artifact format (``CardConfig.category_probs``),
   so the runtime loads either with ``CardPredictor.from_pretrained``. Test NLLs are reported, never used.
2. **Reasoning tokens by gain per cost** (``gain_per_cost``): on the calibration split, the multiplier
   of ``choose_tokens``' rule with the fewest realised seconds per passing request in loop order.
3. **The hopeless budget** (``beyond_budget``): for calibration requests whose need quantile falls in
   the beyond mass, the budget grows from one attempt only while the next attempts buy passes at least
   as cheaply (passes per second) as the budgets of the other requests do; a give-up budget otherwise.

Both thresholds are point choices on the calibration split; ``ade_train.certify`` can certify them
(the candidates and their per-request outcomes are returned for that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ade_runtime.policy import PolicyConfig, budget
from ade_runtime.predictors.budget_prediction import BudgetPrediction, choose_tokens
from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
from ade_runtime.traces import EditRecord
from ade_train.card.category import CategoryClassifier, fit_category_classifier
from ade_train.card.metrics import category_prior_probs, censored_nll, prior_probs, token_pass_prior

GAIN_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, math.inf)
MIN_HOPELESS = 5  # fewer hopeless calibration requests than this: the give-up budget (one level) is kept


@dataclass
class ExportChoice:
    """The exported predictor and why (``source``: "card" or "category_prior")."""

    source: str
    predictor: CardPredictor
    nll: dict[str, float]
    reason: str
    thresholds: dict[str, Any] = field(default_factory=dict)
    alternative: CardPredictor | None = None


def _nll(probs: torch.Tensor, t: dict[str, torch.Tensor]) -> float:
    logp = probs.clamp_min(1e-12).log()
    return float(censored_nll(logp, t["level"], t["censor_from"], t["censored"]).mean())


def category_tables(dm: Any, n_classes: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-category budget probabilities and P(pass) per token level from the train split ('*': all)."""
    train = dm.tensors("train")
    cats = [str(r.category) for r in dm.records("train")]
    names = sorted(set(cats))
    probs = category_prior_probs(train["level"], train["censored"], cats, names + ["*"], n_classes)
    table = {c: probs[i].tolist() for i, c in enumerate(names)}
    table["*"] = prior_probs(train["level"], train["censored"], n_classes, 1)[0].tolist()
    tokens = {c: token_pass_prior(train["token_pass"][[x == c for x in cats]]).tolist() for c in names}
    tokens["*"] = token_pass_prior(train["token_pass"]).tolist()
    return table, tokens


def split_nll(module: Any, dm: Any, split: str) -> dict[str, float]:
    """CARD's, the constant prior's and the per-category prior's NLL on one split."""
    t, train = dm.tensors(split), dm.tensors("train")
    n = module.config.n_budget_classes
    module.eval()
    with torch.no_grad():
        probs = module(t["x"])[0].softmax(-1)
    cats = [str(r.category) for r in dm.records(split)]
    train_cats = [str(r.category) for r in dm.records("train")]
    return {
        "card": _nll(probs, t),
        "prior": _nll(prior_probs(train["level"], train["censored"], n, len(cats)), t),
        "category_prior": _nll(
            category_prior_probs(train["level"], train["censored"], train_cats, cats, n), t
        ),
    }


def _seconds_per_pass(records: list[EditRecord], tokens: list[int], s_max: int, unit: str) -> float:
    """Realised cost of running each request in loop order (at its chosen level) to its first pass."""
    cost = passes = 0.0
    for rec, t in zip(records, tokens, strict=True):
        levels = budget.reasoning_levels(rec)
        t = min(levels, key=lambda x: (abs(x - t), x))  # the record's closest logged level, as replay snaps
        for a in budget.loop_order(rec, t, s_max):
            cost += budget.attempt_cost(a, unit)
            if a.judge is not None and a.judge.passed:
                passes += 1
                break
    return cost / passes if passes else math.inf


def calibrate_gain_per_cost(
    preds: list[BudgetPrediction], records: list[EditRecord], cfg: CardConfig, s_max: int, unit: str
) -> dict[str, Any]:
    """The multiplier in ``GAIN_GRID`` with the fewest seconds per pass on ``records`` (ties: nearest 1.0,
    the break-even of the rule)."""
    if len(cfg.token_levels) < 2 or not records:
        return {"gain_per_cost": None, "candidates": [], "why": "one token level: nothing to choose"}
    rows = []
    for lam in GAIN_GRID:
        tokens = [
            choose_tokens(cfg.token_levels, p.token_pass or p.token_probs, cfg.token_seconds, lam)
            for p in preds
        ]
        rows.append(
            {
                "gain_per_cost": lam,
                "seconds_per_pass": _seconds_per_pass(records, tokens, s_max, unit),
                "think_rate": sum(t != cfg.token_levels[0] for t in tokens) / len(tokens),
            }
        )
    best = min(rows, key=lambda r: (r["seconds_per_pass"], abs(r["gain_per_cost"] - 1.0)))
    lam = best["gain_per_cost"]
    return {
        "gain_per_cost": lam if math.isfinite(lam) else 1e9,  # inf = never think; JSON has no inf
        "candidates": rows,
        "why": f"fewest {unit} per passing request on {len(records)} calibration requests "
        f"({best['seconds_per_pass']:.2f}, thinking on {best['think_rate']:.0%})",
    }


def _spent(rec: EditRecord, b: int, s_max: int, unit: str) -> tuple[float, bool]:
    """Cost and pass of running ``rec`` at its base level in loop order with an attempt budget ``b``."""
    cost = 0.0
    for a in budget.loop_order(rec, budget.reasoning_levels(rec)[0], s_max)[:b]:
        cost += budget.attempt_cost(a, unit)
        if a.judge is not None and a.judge.passed:
            return cost, True
    return cost, False


def calibrate_beyond_budget(
    preds: list[BudgetPrediction],
    records: list[EditRecord],
    levels: list[int],
    q: float,
    s_max: int,
    unit: str,
) -> dict[str, Any]:
    """The budget of hopeless requests: grow while the next attempts buy passes as cheaply as elsewhere."""
    hopeless = [r for p, r in zip(preds, records, strict=True) if p.hopeless(q)]
    rest = [(p, r) for p, r in zip(preds, records, strict=True) if not p.hopeless(q)]
    if len(hopeless) < MIN_HOPELESS:
        return {
            "beyond_budget": levels[0],
            "n_hopeless": len(hopeless),
            "candidates": [],
            "why": f"only {len(hopeless)} hopeless calibration requests (< {MIN_HOPELESS}): give up after "
            f"{levels[0]} attempt(s)",
        }
    spent = [_spent(r, p.quantile(q), s_max, unit) for p, r in rest]
    ref_cost = sum(c for c, _ in spent)
    ref_rate = sum(ok for _, ok in spent) / ref_cost if ref_cost > 0 else 0.0
    rows = []
    for b in levels:
        runs = [_spent(r, b, s_max, unit) for r in hopeless]
        rows.append({"budget": b, "cost": sum(c for c, _ in runs), "passes": sum(ok for _, ok in runs)})
    chosen = 0
    while True:  # walk the upper hull: the farther budget with the best marginal passes per cost
        cur = rows[chosen]
        best, best_rate = None, -1.0
        for j in range(chosen + 1, len(rows)):
            dc = rows[j]["cost"] - cur["cost"]
            rate = (rows[j]["passes"] - cur["passes"]) / dc if dc > 0 else 0.0
            if rate > best_rate:  # ties: the nearer budget (same passes per cost, less spent)
                best, best_rate = j, rate
        if best is None or best_rate < ref_rate or best_rate <= 0:
            break
        chosen = best
    b = rows[chosen]["budget"]
    return {
        "beyond_budget": int(b),
        "n_hopeless": len(hopeless),
        "reference_passes_per_unit": ref_rate,
        "candidates": rows,
        "why": f"{len(hopeless)} hopeless calibration requests: {b} attempt(s); more would buy passes more "
        f"dearly than the other requests' budgets ({ref_rate:.4f} passes per {unit})",
    }


def _calibrated(
    config: CardConfig, module: Any, dm: Any, q: float, classifier: CategoryClassifier | None = None
) -> tuple[CardPredictor, dict[str, Any]]:
    """A predictor for ``config`` with both thresholds calibrated on its own calibration predictions.

    The calibration requests are predicted as production would: without their category labels."""
    config = CardConfig.from_dict(config.to_dict())  # re-validates the tables
    model = CardModel(config)
    model.load_state_dict(module.model.state_dict(), strict=classifier is None)
    if classifier is not None:
        with torch.no_grad():
            model.category_head.weight.copy_(classifier.weight)
            model.category_head.bias.copy_(classifier.bias)
    predictor = CardPredictor(model, dm.featurizer)
    cal = dm.records("calibration") if dm.split_ids["calibration"] else []
    if not cal:
        return predictor, {}
    preds = predictor.predict_features(dm.tensors("calibration")["x"], None)
    gain = calibrate_gain_per_cost(preds, cal, config, dm.s_max, dm.unit)
    beyond = calibrate_beyond_budget(preds, cal, config.levels, q, dm.s_max, dm.unit)
    predictor.model.config = replace(
        config, gain_per_cost=gain["gain_per_cost"], beyond_budget=beyond["beyond_budget"]
    )
    return predictor, {"gain_per_cost": gain, "beyond_budget": beyond, "quantile": q}


def _standardised(module: Any, x: torch.Tensor) -> torch.Tensor:
    m = module.model
    return (x - m.feature_mean) / m.feature_std


def inferred_prior(
    module: Any, dm: Any, table: dict[str, list[float]]
) -> tuple[CategoryClassifier | None, dict]:
    """The category classifier (fit on train, L2 by validation) and the inferred prior's NLL per split."""
    val_split = "val" if dm.split_ids["val"] else "train"
    cats = {s: [str(r.category) for r in dm.records(s)] for s in ("train", val_split)}
    with torch.no_grad():
        z = {s: _standardised(module, dm.tensors(s)["x"]) for s in ("train", val_split)}
    clf = fit_category_classifier(z["train"], cats["train"], z[val_split], cats[val_split])
    nll: dict[str, float] = {}
    for split, key in ((val_split, "val"), ("test", "test")):
        if key == "test" and not dm.split_ids["test"]:
            continue
        t = dm.tensors(split)
        if clf is None:
            probs = torch.tensor(table["*"]).expand(len(t["x"]), -1)
        else:
            with torch.no_grad():
                probs = clf.proba(_standardised(module, t["x"])) @ torch.tensor([table[c] for c in clf.names])
        nll[f"{key}/inferred_prior_nll"] = _nll(probs, t)
    return clf, nll


def choose_export(module: Any, dm: Any, quantile: float | None = None) -> ExportChoice:
    """CARD or the per-category prior fed by a category classifier, by validation NLL; both label-free.

    Production requests carry no category, so the prior that competes with CARD infers it from the
    request (``ade_train.card.category``); the prior that reads the true label is reported beside them
    (``category_prior_nll``), never chosen by. ``ExportChoice.alternative`` is the one not exported."""
    val_split = "val" if dm.split_ids["val"] else "train"
    nll = {f"val/{k}_nll": v for k, v in split_nll(module, dm, val_split).items()}
    if dm.split_ids["test"]:
        nll.update({f"test/{k}_nll": v for k, v in split_nll(module, dm, "test").items()})
    q = PolicyConfig().card_quantile if quantile is None else quantile
    base = replace(
        module.config,
        token_seconds=list(dm.token_seconds),
        label_s_max=dm.s_max,
        token_target="pass",
        compound_parts=True,  # a compound instruction gets at least each clause's budget
    )
    table, tokens = category_tables(dm, base.n_budget_classes)
    clf, inferred_nll = inferred_prior(module, dm, table)
    nll.update(inferred_nll)
    card, card_th = _calibrated(base, module, dm, q)
    prior_cfg = replace(
        base,
        category_probs=table,
        category_token_pass=tokens,
        categories=clf.names if clf else None,
        offset_probs=None,
    )
    prior, prior_th = _calibrated(prior_cfg, module, dm, q, clf)
    if clf is not None:
        prior_th["category_classifier"] = {**clf.summary(), "why": "L2 by validation log-loss"}
    vs = (
        f"the per-category prior's with the category inferred from the request "
        f"{nll['val/inferred_prior_nll']:.4f} (with the true label, which production lacks: "
        f"{nll['val/category_prior_nll']:.4f})"
    )
    if nll["val/card_nll"] < nll["val/inferred_prior_nll"]:
        reason = f"CARD's validation NLL {nll['val/card_nll']:.4f} beats {vs}"
        return ExportChoice("card", card, nll, reason, card_th, alternative=prior)
    reason = (
        f"CARD's validation NLL {nll['val/card_nll']:.4f} does not beat {vs}: the prior is exported in "
        "CARD's format with its category classifier, so budgets adapt without a label"
    )
    return ExportChoice("category_prior", prior, nll, reason, prior_th, alternative=card)
