"""Threshold search: choose tau_high, tau_low, S_max, the CARD quantile (and the pruning threshold)
by replaying the adaptive policy over the calibration split.

Every candidate ``PolicyConfig`` of a grid is replayed exactly with ``ade_runtime.offline.replay_policy``
(the same session the live loop runs), charging the logged backbone cost plus what scoring, the
critique and previews cost (``Overhead``, as Flash-BoN asks of verifiers). The chosen candidate is the
cheapest one whose mean judge score reaches ``target_fraction`` x the mean judge score of Best-of-8
with the same selector (the calibrated confidence); like MAPIE's risk controllers it exposes the
chosen value *and* every candidate considered. The guarantee is empirical on n requests: the report
gives the paired standard-error margin and a Hoeffding margin, and warns when n cannot support it.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ade_runtime.offline import Outcome, Overhead, oracle_refinements, replay_policy, summarize
from ade_runtime.policy import PolicyConfig, budget_levels
from ade_runtime.progress import progress
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate.risk_control import check_target_fraction

Key = tuple[int, int, int]
SignalFn = Callable[[EditRecord], tuple[Mapping[Key, float], Mapping[Key, float] | None]]
CardFn = Callable[[EditRecord], tuple[int, int]]
# CARD's prediction for a record: a BudgetPrediction (anything with .plan(q) -> (attempts, tokens))
CardPredictFn = Callable[[EditRecord], Any]
SEARCHED = (
    "tau_high", "tau_low", "s_max", "card_quantile", "card_cap", "prune_threshold", "verify_band",
)  # fmt: skip
COLUMNS = (*SEARCHED, "default_budget", "use_card")  # what a candidate row records of its PolicyConfig


def _packaged(name: str) -> Any:
    """A grid field's default: ``grid.<name>`` of ade_train/configs/calibrate.yaml, where defaults live."""

    def default() -> Any:
        from ade_train.calibrate.config import packaged_defaults

        return packaged_defaults()["grid"][name]

    return field(default_factory=default)


# SearchGrid values are PolicyConfig fields: each is checked by PolicyConfig itself, as configs() casts it,
# beside a partner that lets it pass the pair rule tau_low <= tau_high (checked per pair in configs())
_PARTNER = {"tau_high": {"tau_low": 0.0}, "tau_low": {"tau_high": 1.0}}
_CAST: dict[str, Callable[[Any], Any]] = {
    "tau_high": float,
    "tau_low": float,
    "s_max": int,
    "card_quantile": float,
    "prune_threshold": lambda v: None if v is None else float(v),
    "card_cap": lambda v: None if v is None else int(v),
    "default_budget": int,
}


@dataclass
class SearchGrid:
    """Values tried for each threshold (the product of the lists, minus tau_low > tau_high); the defaults
    are the ``grid:`` of ``configs/calibrate.yaml``."""

    tau_high: Sequence[float] = _packaged("tau_high")
    tau_low: Sequence[float] = _packaged("tau_low")
    s_max: Sequence[int] = _packaged("s_max")
    card_quantile: Sequence[float] = _packaged("card_quantile")
    # with CARD: the attempts of a request it calls hopeless (null: the artifact's calibrated give-up budget)
    card_cap: Sequence[int | None] = _packaged("card_cap")
    prune_threshold: Sequence[float | None] = _packaged("prune_threshold")
    verify_band: Sequence[tuple[float, float] | None] = _packaged("verify_band")  # with a verifier
    default_budget: Sequence[int] | None = _packaged("default_budget")  # searched instead of
    # card_quantile without CARD; None = the budget levels the traces offer

    def __post_init__(self) -> None:
        if self.default_budget is not None:
            self.default_budget = list(self.default_budget)
            if not self.default_budget:
                raise ValueError("SearchGrid.default_budget is empty; give attempt counts >= 1 or null")
        for name in SEARCHED:
            values = list(getattr(self, name))
            if not values:
                raise ValueError(f"SearchGrid.{name} is empty; give at least one value to try")
            setattr(self, name, values)
        self.verify_band = [None if b is None else _band(b) for b in self.verify_band]
        for name in (*SEARCHED, "default_budget"):
            for value in getattr(self, name) or ():
                _check(name, value)
        if self.default_budget is not None:
            self.default_budget = [int(b) for b in self.default_budget]

    def configs(
        self,
        base: PolicyConfig,
        *,
        use_card: bool,
        use_prune: bool,
        levels: Sequence[int] = (),
        use_verifier: bool = False,
    ) -> list[PolicyConfig]:
        """Every valid candidate. Without CARD the fixed attempt budget (``default_budget``: these values,
        else the budget ``levels`` the traces offer) is searched instead of the quantile; without
        previews pruning stays off; without an expensive verifier the cascade band is not searched."""
        chains = base.refine or base.fixed_rounds
        fixed = list(self.default_budget or levels or [base.default_budget])
        modes = [(True, self.card_quantile, [base.default_budget], self.card_cap)] if use_card else []
        if not chains:  # fresh samples only: a budget above max_candidates buys nothing more
            fixed = sorted({min(int(b), base.max_candidates) for b in fixed})
        if not use_card or not chains:
            # without CARD, the fixed attempt budget; without refinement, beside CARD too: CARD's labels
            # count attempts of the loop with refinement chains, so its budgets may be too small for a
            # loop that only samples afresh
            modes.append((False, [base.card_quantile], fixed, [base.card_cap]))
        prunes = self.prune_threshold if use_prune else [None]
        bands = self.verify_band if use_verifier else [None]
        out = []
        # without refinement tau_low and s_max change nothing (every unconfident attempt gives way to a
        # fresh candidate): one value each, not copies of the same setting
        tau_lows = self.tau_low if base.refine else [min(self.tau_low)]
        s_maxes = self.s_max if chains else [1]
        for card_on, quantiles, budgets, hopeless in modes:
            axes = itertools.product(
                self.tau_high, tau_lows, s_maxes, quantiles, hopeless, budgets, prunes, bands
            )
            for th, tl, s, q, hb, b, pr, vb in axes:
                if tl > th:
                    continue
                out.append(
                    replace(
                        base,
                        tau_high=float(th),
                        tau_low=float(tl),
                        s_max=int(s),
                        card_quantile=float(q),
                        card_cap=None if hb is None else int(hb),
                        default_budget=int(b),
                        prune_threshold=None if pr is None else float(pr),
                        use_card=card_on,
                        verify_band=vb,
                    )
                )
        return out


def searched_base(base: PolicyConfig, records: Sequence[EditRecord]) -> tuple[PolicyConfig, str | None]:
    """The fixed part of every searched setting, and why it differs from ``base`` (None: it does not):
    refinement is switched off when the traces' refinement rounds follow judge-written prompts (the
    testbed's oracle). Replaying such a chain credits feedback the live loop cannot write (on the testbed
    the export of such a search replayed level with Best-of-8 and scored 0.10 below it live), so only
    fresh samples are searched; traces the live loop collected (``ade-collect``) carry its own prompts."""
    oracle = oracle_refinements(records)
    if not oracle or not base.refine:
        return base, None
    note = (
        f"the refinement rounds of {len(oracle)} of {len(records)} calibration records follow "
        "judge-written prompts (meta.refinement_feedback = 'judge'): replaying them would credit feedback "
        "production cannot write, so refinement is not searched (refine = false: fresh samples only, "
        "fixed budgets searched beside CARD's); calibrate on traces the live loop collected (ade-collect) "
        "to certify it"
    )
    return replace(base, refine=False, use_mask=False), note


@dataclass
class SearchResult:
    """The chosen policy, the reference it had to match, and every candidate with compute and quality."""

    chosen: PolicyConfig
    feasible: bool
    target_score: float
    reference: dict[str, Any]
    compute_key: str
    candidates: list[dict[str, Any]]
    guarantee: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    choice_warnings: int = 0  # the last this-many warnings are about the search's own choice
    target_curve: list[dict] = field(default_factory=list)  # the certified setting at other targets
    # the replay itself, for certification: setting k's outcome on every request, and the reference's
    configs: list[PolicyConfig] = field(default_factory=list, repr=False)
    outcomes: list[list[Outcome]] = field(default_factory=list, repr=False)
    reference_outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def choose(self, index: int | None, policy: PolicyConfig) -> None:
        """Make ``policy`` (grid setting ``index``, None for one outside the grid) the chosen one."""
        self.chosen = policy
        for i, row in enumerate(self.candidates):
            row["chosen"] = i == index

    def table_csv(self) -> str:
        """The candidates table as CSV text (one row per candidate, the chosen one flagged)."""
        cols = [*COLUMNS, "mean_score", "pass_rate", "compute", "nfe_per_request"]
        cols += ["gpu_seconds_per_request", "attempts_per_request", "verifier_calls_per_request"]
        cols += ["incomplete", "feasible", "chosen"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.candidates:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
        return buf.getvalue()


def _band(band: Any) -> Any:
    try:
        return (float(band[0]), float(band[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        return band  # not [low, high]: PolicyConfig says so


def _check(name: str, value: Any) -> None:
    """``value`` of grid field ``name`` as a PolicyConfig would hold it; PolicyConfig's own error if not."""
    try:
        PolicyConfig(**{**_PARTNER.get(name, {}), name: _CAST.get(name, lambda v: v)(value)})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"SearchGrid.{name} has a value PolicyConfig refuses ({value!r}): {exc}") from None


def compute_of(summary: Mapping[str, Any], key: str) -> float:
    v = summary.get(key)
    return float("nan") if v is None else float(v)


def guarantee_margins(
    ours: Sequence[Outcome], reference: Sequence[Outcome], target_fraction: float, margin: float | None = None
) -> dict:
    """How well n requests support "mean score >= target_fraction x reference" (or, with ``margin``,
    ">= reference - margin") for the chosen policy.

    Paired differences d_i = score_i - target_fraction * ref_i (score_i - ref_i + margin); the slack is
    mean(d). Margins at 95% one-sided: normal (1.645 sd / sqrt n) and Hoeffding (sqrt(2 ln(1/0.05) / n)).
    """
    ref = {o.id: o.score for o in reference}
    if margin is not None:
        d = np.array([o.score - ref[o.id] + margin for o in ours if o.id in ref], dtype=np.float64)
    else:
        d = np.array([o.score - target_fraction * ref[o.id] for o in ours if o.id in ref], dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"n": 0, "slack": float("nan"), "se_margin": float("inf"), "hoeffding_margin": float("inf")}
    sd = float(d.std(ddof=1)) if n > 1 else float("inf")
    return {
        "n": n,
        "slack": float(d.mean()),
        "se_margin": 1.645 * sd / math.sqrt(n),
        "hoeffding_margin": math.sqrt(2.0 * math.log(1.0 / 0.05) / n),
    }


# long function: replay of the grid and the choice, one pass over the candidates
def search_thresholds(
    records: Sequence[EditRecord],
    signals: SignalFn,
    *,
    base: PolicyConfig,
    grid: SearchGrid,
    card: CardPredictFn | None,
    overhead: Overhead,
    compute_key: str,
    target_fraction: float = 1.0,
    margin: float | None = None,
    reference_policy: str = "best_of_8",
    reference_ids: set[str] | None = None,
    max_reference_n: int = 8,
    use_prune: bool = False,
    min_requests: int = 100,
) -> SearchResult:
    """Replay every candidate of ``grid`` and choose the cheapest meeting the quality target.

    The target is ``target_fraction`` x the reference's mean score, or with ``margin`` the reference's
    mean minus the margin. ``reference_policy="best_of_n"`` takes the best Best-of-N (N = 1, 2, 4, ...
    up to ``max_reference_n`` and the candidates the traces hold) by mean score on ``reference_ids``
    (the fit part; None: every record), the smaller N on a tie.
    ``card(rec)`` returns CARD's prediction for a record (``BudgetPrediction``), computed once and
    read at each candidate's quantile. ``compute_key`` is ``"gpu_seconds_per_request"`` or ``"nfe_per_request"`` (see ``summarize``).
    Without a feasible candidate the one with the highest mean score is returned, ``feasible=False``.
    """
    if not records:
        raise ValueError("search_thresholds: the calibration split has no records")
    check_target_fraction(target_fraction)
    # signals are computed once per record: every candidate replays the same confidences
    cache = {rec.id: signals(rec) for rec in progress(records, desc="calibrate: confidences")}
    cards = {rec.id: card(rec) for rec in records} if card is not None else {}

    def cached_signals(rec: EditRecord):
        return cache[rec.id]

    def cached_card(rec: EditRecord):
        return cards[rec.id]

    levels = budget_levels(records)
    chosen_from: dict[str, float] = {}
    bo8_compute = None
    if reference_policy == "best_of_n":
        reference_policy, ref_out, chosen_from = best_reference(
            records, base, cached_signals, overhead, reference_ids, max_reference_n, _candidates(records)
        )
        if reference_policy != "best_of_8" and _candidates(records) >= 8:
            bo8 = summarize(replay_policy(records, "best_of_8", base, cached_signals, None, overhead))
            bo8_compute = compute_of(bo8, compute_key)
    else:
        ref_out = replay_policy(records, reference_policy, base, cached_signals, None, overhead)
    ref_sum = summarize(ref_out)
    target = ref_sum["mean_score"] - margin if margin is not None else target_fraction * ref_sum["mean_score"]
    reference = {"policy": reference_policy, **{k: v for k, v in ref_sum.items() if k != "by_category"}}
    reference["compute"] = compute_of(ref_sum, compute_key)
    if chosen_from:
        reference["chosen_from"] = chosen_from  # mean score of each Best-of-N on the fit part
    if bo8_compute is not None:
        reference["best_of_8_compute"] = bo8_compute

    rows: list[dict[str, Any]] = []
    outcomes: list[list[Outcome]] = []
    # signals with a first-stage confidence mean an expensive verifier in the stack: search the cascade band
    use_verifier = any(sig.first_stage is not None for sig in cache.values())
    configs = grid.configs(
        base, use_card=card is not None, use_prune=use_prune, levels=levels, use_verifier=use_verifier
    )
    for cfg in progress(configs, desc="calibrate: threshold search (replay)"):
        # a card quantile is baked into the per-record budget: recompute the budget for this q
        card_q = _card_at(cards, cfg.card_quantile, cfg.card_cap) if card is not None else None
        outs = replay_policy(records, "ade", cfg, cached_signals, card_q, overhead)
        s = summarize(outs)
        row = {k: getattr(cfg, k) for k in COLUMNS}
        row.update({k: v for k, v in s.items() if k != "by_category"})
        row["compute"] = compute_of(s, compute_key)
        row["feasible"] = bool(s["mean_score"] >= target - 1e-12)
        row["chosen"] = False
        rows.append(row)
        outcomes.append(outs)
    feasible = [i for i, r in enumerate(rows) if r["feasible"]]
    if feasible:
        best = min(feasible, key=lambda i: (rows[i]["compute"], -rows[i]["mean_score"], i))
    else:
        best = max(range(len(rows)), key=lambda i: (rows[i]["mean_score"], -rows[i]["compute"], -i))
    rows[best]["chosen"] = True
    guarantee = guarantee_margins(outcomes[best], ref_out, target_fraction, margin)
    goal = (
        f"{reference_policy} mean score - {margin:g}"
        if margin is not None
        else (f"{target_fraction:g} x {reference_policy} mean score")
    )
    warnings, n_choice = _search_warnings(
        len(records), ref_sum, rows[best], bool(feasible), guarantee, target, goal, reference_policy,
        min_requests,
    )  # fmt: skip
    return SearchResult(
        chosen=configs[best],
        feasible=bool(feasible),
        target_score=target,
        reference=reference,
        compute_key=compute_key,
        candidates=rows,
        guarantee=guarantee,
        warnings=warnings,
        choice_warnings=n_choice,
        configs=configs,
        outcomes=outcomes,
        reference_outcomes=ref_out,
    )


def _search_warnings(
    n: int,
    ref_sum: Mapping[str, Any],
    chosen: Mapping[str, Any],
    feasible: bool,
    guarantee: Mapping[str, float],
    target: float,
    goal: str,
    reference_policy: str,
    min_requests: int,
) -> tuple[list[str], int]:
    """What the search result cannot promise: incomplete replays, no feasible candidate, small n.

    The first two are about the data; the rest about the search's own (uncertified) choice, which
    ``SearchResult.choice_warnings`` counts so certification can drop them when it exports another policy.
    """
    warnings: list[str] = []
    if ref_sum.get("incomplete"):
        warnings.append(
            f"reference {reference_policy} asked for attempts the traces do not have in {ref_sum['incomplete']} of "
            f"{n} requests (it stopped there): the target is that of the grid the traces offer"
        )
    if chosen.get("incomplete"):
        warnings.append(
            f"the chosen policy asked for attempts the traces do not have in {chosen['incomplete']} of {n} "
            "requests (its budget goes beyond the logged grid); its figures count what was logged"
        )
    n_data = len(warnings)
    if not feasible:
        warnings.append(
            f"no candidate reaches {goal} ({target:.4f}) on the {n} calibration requests; chose the "
            f"highest-scoring one ({chosen['mean_score']:.4f}); widen the grid or declare a wider --margin"
        )
    if n < min_requests:
        warnings.append(
            f"calibration split has n={n} requests (< {min_requests}): the quality constraint holds on these "
            f"requests only; at 95% the mean score is known to +-{guarantee['se_margin']:.3f} (normal) / "
            f"+-{guarantee['hoeffding_margin']:.3f} (Hoeffding), slack {guarantee['slack']:.3f}"
        )
    elif feasible and guarantee["slack"] < guarantee["se_margin"]:
        warnings.append(
            f"the chosen policy meets the target with slack {guarantee['slack']:.4f}, below the 95% margin "
            f"{guarantee['se_margin']:.4f} for n={n}: the guarantee is not supported beyond these requests"
        )
    return warnings, len(warnings) - n_data


def _candidates(records: Sequence[EditRecord]) -> int:
    """The most candidates any record logged (the largest Best-of-N the traces can replay)."""
    return max((len({a.candidate for a in r.attempts}) for r in records), default=1)


def reference_sizes(max_n: int, candidates: int) -> list[int]:
    """The Ns ``best_of_n`` considers: 1, 2, 4, ... up to ``max_n`` and the candidates logged, and that cap."""
    cap = max(1, min(int(max_n), int(candidates)))
    sizes, n = [], 1
    while n < cap:
        sizes.append(n)
        n *= 2
    return [*sizes, cap]


def best_reference(
    records: Sequence[EditRecord],
    base: PolicyConfig,
    signals: SignalFn,
    overhead: Overhead,
    fit_ids: set[str] | None,
    max_n: int,
    candidates: int,
) -> tuple[str, list[Outcome], dict[str, float]]:
    """The strongest reference a user would run: the Best-of-N (same selector) with the highest mean score
    on the fit part (``fit_ids``), the smaller N on a tie. (name, its outcomes on every record, the
    fit-part mean of each N tried)."""
    best: tuple[str, list[Outcome]] | None = None
    means: dict[str, float] = {}
    for n in reference_sizes(max_n, candidates):
        name = f"best_of_{n}"
        outs = replay_policy(records, name, base, signals, None, overhead)
        part = [o.score for o in outs if fit_ids is None or o.id in fit_ids] or [o.score for o in outs]
        means[name] = round(float(np.mean(part)), 6)
        if best is None or means[name] > means[best[0]]:
            best = (name, outs)
    assert best is not None
    return best[0], best[1], means


def _card_at(cards: Mapping[str, Any], q: float, card_cap: int | None = None) -> CardFn:
    """A CardFn answering from precomputed predictions at quantile ``q`` (and a policy's hopeless budget)."""

    def fn(rec: EditRecord) -> tuple[int, int]:
        return cards[rec.id].plan(q, card_cap=card_cap)

    return fn
