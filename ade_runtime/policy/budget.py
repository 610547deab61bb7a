"""Budget levels: how much of an attempt grid a request needed (CARD's labels).

A *grid point* ``(K, R, t)`` is every attempt of a record with ``candidate < K``,
``round < R`` and ``reasoning_tokens == t``; it costs the sum of those attempts' costs
and *passes* when any of them has a passing judge label. A request's realised need is
its cheapest passing grid point; its budget level is the number of attempts ``K * R``
there. Requests that pass nowhere are right-censored ("beyond" the largest level),
never dropped. Training (labels), calibration (replay) and the loop share this module
so that a budget means the same thing everywhere (docs/DESIGN.md, "Budget levels").

CARD trains on the *loop-order* labels (``loop_label``): the attempts of one token level in the
order ``PolicySession`` visits them (candidate 0 rounds 0..s_max-1, then candidate 1, ...), and
the need is the position of the first passing attempt in that order, so a predicted budget is
the number of attempts the loop itself would run. The rectangle grid points above stay for
replay's diagnostics and the older labels.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ade_runtime.traces.records import Attempt, EditRecord


@dataclass(frozen=True)
class GridPoint:
    """``candidates`` independent samples, each refined up to ``rounds`` rounds, at ``reasoning_tokens``."""

    candidates: int
    rounds: int
    reasoning_tokens: int

    @property
    def attempts(self) -> int:
        return self.candidates * self.rounds


@dataclass(frozen=True)
class BudgetLabel:
    """The realised need of one request.

    ``level_index`` indexes the dataset's levels; ``len(levels)`` means beyond (censored).
    """

    level_index: int
    censored: bool
    point: GridPoint | None
    cost: float | None

    @property
    def attempts(self) -> int | None:
        return None if self.point is None else self.point.attempts

    @property
    def reasoning_tokens(self) -> int | None:
        return None if self.point is None else self.point.reasoning_tokens


def pruned_nfe(full_nfe: int | float, preview_nfe: int | float) -> int:
    """What a candidate pruned at its one-step preview spent: the function evaluations up to the preview
    (CFG passes counted), never more than the full attempt. The one definition replay, the live loop's
    backbones and the testbed share, so a pruned attempt costs the same wherever it is counted."""
    return int(min(int(preview_nfe), int(full_nfe)))


def attempt_cost(attempt: Attempt, unit: str = "seconds") -> float:
    """Cost of one attempt: modelled/measured seconds when ``unit == "seconds"``, else NFE."""
    if unit == "seconds":
        if attempt.cost.latency_s is None:
            raise ValueError("attempt has no cost.latency_s; use unit='nfe'")
        return float(attempt.cost.latency_s)
    if unit == "nfe":
        return float(attempt.cost.nfe)
    raise ValueError(f"unit must be 'seconds' or 'nfe', got {unit!r}")


def cost_unit(records: Iterable[EditRecord]) -> str:
    """'seconds' when every attempt carries ``latency_s``, else 'nfe'."""
    for rec in records:
        for a in rec.attempts:
            if a.cost.latency_s is None:
                return "nfe"
    return "seconds"


def reasoning_levels(record: EditRecord) -> list[int]:
    return sorted({a.reasoning_tokens for a in record.attempts})


def grid_points(record: EditRecord, unit: str = "nfe") -> list[tuple[GridPoint, float, bool]]:
    """Every complete grid point of a record with its cost and whether it passes.

    A point is complete when all of its attempts are present. Attempts without a judge
    label count as not passing.
    """
    out: list[tuple[GridPoint, float, bool]] = []
    for t in reasoning_levels(record):
        cells = {(a.candidate, a.round): a for a in record.attempts if a.reasoning_tokens == t}
        max_c = 1 + max(c for c, _ in cells)
        max_r = 1 + max(r for _, r in cells)
        # Column sums over candidates c < k of each candidate's round prefix (r < R), built incrementally.
        col_cost = [0.0] * (max_r + 1)
        col_pass = [False] * (max_r + 1)
        col_ok = [True] * (max_r + 1)
        for k in range(1, max_c + 1):
            cost = 0.0
            passed = False
            ok = True
            for r in range(1, max_r + 1):
                a = cells.get((k - 1, r - 1))
                if a is None:
                    ok = False
                else:
                    cost += attempt_cost(a, unit)
                    passed = passed or (a.judge is not None and a.judge.passed)
                col_cost[r] += cost
                col_pass[r] = col_pass[r] or passed
                col_ok[r] = col_ok[r] and ok
                if col_ok[r]:
                    out.append((GridPoint(k, r, t), col_cost[r], col_pass[r]))
    return out


def budget_levels(records: Iterable[EditRecord]) -> list[int]:
    """Sorted distinct attempt counts ``K * R`` that the records' complete grids offer."""
    levels: set[int] = set()
    for rec in records:
        levels.update(p.attempts for p, _, _ in grid_points(rec))
    return sorted(levels)


def level_index(levels: list[int], attempts: int) -> int:
    """Index of the smallest level >= ``attempts`` (``len(levels)`` when above them all)."""
    return bisect.bisect_left(levels, attempts)


def is_judged(record: EditRecord) -> bool:
    return any(a.judge is not None for a in record.attempts)


def budget_label(record: EditRecord, levels: list[int], unit: str = "nfe") -> BudgetLabel | None:
    """The cheapest passing grid point of ``record`` (None when no attempt is judged).

    Ties go to fewer reasoning tokens, then fewer attempts.
    """
    if not is_judged(record):
        return None
    best: tuple[float, int, int, GridPoint] | None = None
    for point, cost, passed in grid_points(record, unit):
        if not passed:
            continue
        key = (cost, point.reasoning_tokens, point.attempts, point)
        if best is None or key[:3] < best[:3]:
            best = key
    if best is None:
        return BudgetLabel(level_index=len(levels), censored=True, point=None, cost=None)
    cost, _, attempts, point = best
    return BudgetLabel(level_index=level_index(levels, attempts), censored=False, point=point, cost=cost)


def loop_order(record: EditRecord, reasoning_tokens: int, s_max: int) -> list[Attempt]:
    """Attempts at ``reasoning_tokens`` in the loop's depth-first order, each chain cut at ``s_max`` rounds.

    The order ends at the first missing attempt: the loop (and replay) stop there too.
    """
    if s_max < 1:
        raise ValueError(f"s_max must be >= 1, got {s_max}")
    cells = {(a.candidate, a.round): a for a in record.attempts if a.reasoning_tokens == reasoning_tokens}
    if not cells:
        return []
    out: list[Attempt] = []
    for c in range(1 + max(c for c, _ in cells)):
        for r in range(s_max):
            a = cells.get((c, r))
            if a is None:
                if r == 0:
                    return out
                break  # a shorter chain: the grid's rounds end here, the loop moves on
            out.append(a)
    return out


@dataclass(frozen=True)
class LoopLabel:
    """The realised need of one request in loop order at its base token level.

    ``need`` is the 1-based position of the first passing attempt (None: censored, nothing in the
    ``length`` attempts passed); ``token_pass[t]`` the share of round-0 attempts at ``t`` that pass
    (a single attempt's pass probability, the quantity the token choice trades against its cost).
    """

    level_index: int
    censored: bool
    need: int | None
    length: int
    cost: float | None
    token_pass: dict[int, float]


def loop_levels(records: Iterable[EditRecord], s_max: int) -> list[int]:
    """Budget levels in loop order: 1 .. the longest base-level order of any record."""
    longest = 0
    for rec in records:
        levels = reasoning_levels(rec)
        if levels:
            longest = max(longest, len(loop_order(rec, levels[0], s_max)))
    return list(range(1, longest + 1))


def loop_label(record: EditRecord, levels: list[int], s_max: int, unit: str = "nfe") -> LoopLabel | None:
    """The loop-order need of ``record`` at its smallest token level (None when nothing is judged)."""
    if not is_judged(record):
        return None
    tokens = reasoning_levels(record)
    order = loop_order(record, tokens[0], s_max)
    token_pass: dict[int, float] = {}
    for t in tokens:
        first = [
            a for a in record.attempts if a.reasoning_tokens == t and a.round == 0 and a.judge is not None
        ]
        if first:
            token_pass[t] = sum(a.judge.passed for a in first) / len(first)  # type: ignore[union-attr]
    cost = 0.0
    for i, a in enumerate(order):
        cost += attempt_cost(a, unit)
        if a.judge is not None and a.judge.passed:
            return LoopLabel(level_index(levels, i + 1), False, i + 1, len(order), cost, token_pass)
    return LoopLabel(len(levels), True, None, len(order), None, token_pass)


def quantile_level(levels: list[int], probs: list[float], q: float) -> int:
    """Smallest level whose CDF reaches ``q``; the largest level when q falls in the beyond mass.

    ``probs`` has ``len(levels) + 1`` entries, the last one being P(beyond).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    if len(probs) != len(levels) + 1:
        raise ValueError(f"expected {len(levels) + 1} probabilities (levels + beyond), got {len(probs)}")
    total = sum(probs)
    if not math.isfinite(total) or total <= 0:
        raise ValueError("budget probabilities must be finite and sum to a positive number")
    cdf = 0.0
    for level, p in zip(levels, probs[:-1], strict=True):
        cdf += p / total
        if cdf >= q - 1e-12:
            return level
    return levels[-1]
