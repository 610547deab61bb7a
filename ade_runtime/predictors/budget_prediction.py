"""What CARD predicts for one request, and how it becomes an attempt budget and a token level.

``BudgetPrediction`` holds the distribution over budget levels (plus "beyond") and the per-token-level
pass probabilities; ``quantile(q)`` is the attempt budget (a hopeless request gets the calibrated
``beyond_budget``), ``reasoning_tokens`` the token level chosen by gain per cost (``choose_tokens``),
``plan`` the two together as the loop, replay and calibration run them (docs/DESIGN.md, "Budget
levels"; the model and the predictor are in ``card.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ade_runtime.policy.budget import quantile_level

# where a compound instruction's clauses meet: commas, semicolons and the plain coordinators "and" / "then"
_CLAUSE_BREAK = re.compile(r"\s*(?:[,;]|\band\b|\bthen\b)\s*", re.IGNORECASE)
MIN_CLAUSE_WORDS = 3  # shorter pieces ("please", "thanks") are not edits


def clauses(instruction: str) -> list[str]:
    """The clauses of a compound instruction ("make the mug blue and remove the spoon" -> two), split
    at commas, semicolons, "and" and "then"; pieces under ``MIN_CLAUSE_WORDS`` words are dropped.
    Fewer than two clauses: ``[]`` (the instruction is one edit). A split inside one edit ("the black
    and white cat") only adds a piece whose budget is a floor: never fewer attempts than without it."""
    pieces = [p.strip(" .!?") for p in _CLAUSE_BREAK.split(instruction)]
    pieces = [p for p in pieces if len(p.split()) >= MIN_CLAUSE_WORDS]
    return pieces if len(pieces) >= 2 else []


def choose_tokens(
    token_levels: list[int], p_pass: list[float], seconds: list[float], gain_per_cost: float = 1.0
) -> int:
    """The token level whose gain in P(pass) over the smallest level best pays for its extra seconds.

    Level t is worth it when ``p_t - p_0 >= gain_per_cost * p_0 * (s_t - s_0) / s_0``; at 1.0 that is
    exactly where thinking lowers the expected seconds per passing attempt (s_t / p_t < s_0 / p_0).
    """
    p0, s0 = p_pass[0], seconds[0]
    best, best_value = 0, 0.0
    for i in range(1, len(token_levels)):
        value = (p_pass[i] - p0) - gain_per_cost * p0 * (seconds[i] - s0) / s0
        if value > best_value:
            best, best_value = i, value
    return token_levels[best]


@dataclass
class BudgetPrediction:
    """CARD's output for one request."""

    levels: list[int]  # attempt counts, ascending
    probs: list[float]  # P(level) for each level, then P(beyond)
    token_levels: list[int]
    token_probs: list[float]  # P(pass) of one attempt per level (token_pass), else the level distribution
    token_pass: list[float] | None = None
    token_seconds: list[float] | None = None
    gain_per_cost: float | None = None
    beyond_budget: int | None = None
    # where the budget came from: "card", "prior:given" (the caller's category), "prior:inferred" (the
    # classifier's mixture over categories), "prior:all" (no category, no classifier: the '*' row)
    source: str = "card"
    category: str | None = None  # the category used (given, or the classifier's most probable one)
    category_confidence: float | None = None  # the classifier's probability of ``category``
    # a compound instruction's clauses, each predicted alone: the budget is at least each one's
    parts: list[BudgetPrediction] = field(default_factory=list)

    def hopeless(self, q: float) -> bool:
        """True when the q-quantile of the need falls in the beyond mass (no level reaches q)."""
        return sum(self.probs[:-1]) / sum(self.probs) < q - 1e-12

    def quantile(self, q: float, card_cap: int | None = None) -> int:
        """Attempt budget: smallest level whose CDF >= q; a hopeless request gets the artifact's calibrated
        ``beyond_budget``. A compound instruction gets at least the budget of each of its ``parts``.

        ``card_cap`` (a policy's ``PolicyConfig.card_cap``): CARD works within a fixed budget: no request
        gets more, and a hopeless request gets all of it (a loop that samples afresh may do better
        spending it there than giving up)."""
        level = quantile_level(self.levels, self.probs, q)  # checks q and the probabilities
        if self.hopeless(q):
            # spending most where it helps least is what this avoids: the calibrated give-up budget
            give_up = card_cap if card_cap is not None else self.beyond_budget
            level = int(give_up) if give_up is not None else self.levels[0]
        level = max([level, *(p.quantile(q, card_cap) for p in self.parts)])
        return level if card_cap is None else min(level, int(card_cap))

    @property
    def reasoning_tokens(self) -> int:
        """By gain per cost when P(pass) per level and costs are known, else the most probable level."""
        if self.token_pass is not None and self.token_seconds:
            lam = 1.0 if self.gain_per_cost is None else float(self.gain_per_cost)
            return choose_tokens(self.token_levels, self.token_pass, self.token_seconds, lam)
        return self.token_levels[max(range(len(self.token_probs)), key=self.token_probs.__getitem__)]

    def plan(self, q: float, supports_reasoning: bool = True, card_cap: int | None = None) -> tuple[int, int]:
        """(attempt budget at quantile ``q``, reasoning tokens): what the loop, replay and calibration
        run. A backbone without reasoning gets no tokens, whatever CARD would choose; ``card_cap``: the
        fixed budget CARD works within (see ``quantile``)."""
        tokens = max(0, int(self.reasoning_tokens)) if supports_reasoning else 0
        return max(1, int(self.quantile(q, card_cap))), tokens

    @property
    def expected_level(self) -> float:
        """Expected level index (0 = cheapest level, ``len(levels)`` = beyond)."""
        return float(sum(i * p for i, p in enumerate(self.probs)))

    @property
    def p_beyond(self) -> float:
        return float(self.probs[-1])

    def explain(self, q: float, card_cap: int | None = None) -> dict[str, Any]:
        """The budget and token choice with their reasons (the loop's decision log)."""
        out: dict[str, Any] = {
            "quantile": q,
            "budget": self.quantile(q, card_cap),
            "p_beyond": round(self.p_beyond, 4),
            "hopeless": self.hopeless(q),
            "reasoning_tokens": self.reasoning_tokens,
            "budget_source": self.source,
        }
        if self.category is not None:
            out["category"] = self.category
        if self.category_confidence is not None:
            out["category_confidence"] = round(self.category_confidence, 4)
        if self.parts:  # the compound rule: the budget of the whole and of each clause alone
            out["compound_parts"] = [p.quantile(q, card_cap) for p in self.parts]
        if self.token_pass is not None:
            out["token_pass"] = {
                str(t): round(p, 4) for t, p in zip(self.token_levels, self.token_pass, strict=True)
            }
            out["gain_per_cost"] = 1.0 if self.gain_per_cost is None else self.gain_per_cost
        return out
