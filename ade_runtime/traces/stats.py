"""Summary statistics of a trace dataset (what ``ade-traces stats`` prints).

The pass-rate curves are the raw material of adaptive test-time compute: how often one
attempt suffices, how much Best-of-N (more candidates) and refinement (more rounds) add,
and how many requests no attempt of the grid solves (right-censored budgets, see
docs/DESIGN.md "Budget levels"). Accumulated in one streaming pass over valid records.

Definitions (denominator: requests with at least one judged attempt):
- ``pass_rate_by_round[r]``: some attempt with ``round <= r`` passes (any candidate/budget);
- ``pass_rate_by_candidates[k]``: some round-0 attempt with ``candidate < k`` passes;
- ``single_pass_rate``: the attempt (0, 0, lowest reasoning budget of the record) passes;
- ``never_pass_share``: no attempt of the record passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .records import EditRecord


class StatsAccumulator:
    """Streaming accumulator; ``add`` each valid record, then ``result()``."""

    def __init__(self) -> None:
        self.requests = 0
        self.attempts = 0
        self.judged_attempts = 0
        self.judged_requests = 0
        self.categories: Counter[str] = Counter()
        self.backbones: Counter[str] = Counter()
        self.token_levels: Counter[int] = Counter()
        self.first_pass_round: Counter[int] = Counter()  # per judged request: lowest passing round
        self.first_pass_candidate: Counter[int] = Counter()  # lowest passing candidate at round 0
        self.max_round = 0
        self.max_candidate = 0
        self.single_pass = 0
        self.never_pass = 0
        self.nfe_total = 0
        self.latency_total = 0.0
        self.latency_attempts = 0

    def add(self, rec: EditRecord) -> None:
        self.requests += 1
        self.attempts += len(rec.attempts)
        self.categories[rec.category if rec.category is not None else "(none)"] += 1
        self.backbones[rec.backbone] += 1
        judged = False
        best_round: int | None = None
        best_cand: int | None = None
        for a in rec.attempts:
            self.token_levels[a.reasoning_tokens] += 1
            self.max_round = max(self.max_round, a.round)
            self.max_candidate = max(self.max_candidate, a.candidate)
            self.nfe_total += a.cost.nfe
            if a.cost.latency_s is not None:
                self.latency_total += a.cost.latency_s
                self.latency_attempts += 1
            if a.judge is None:
                continue
            judged = True
            self.judged_attempts += 1
            if a.judge.passed:
                best_round = a.round if best_round is None else min(best_round, a.round)
                if a.round == 0:
                    best_cand = a.candidate if best_cand is None else min(best_cand, a.candidate)
        if not judged:
            return
        self.judged_requests += 1
        if best_round is None:
            self.never_pass += 1
        else:
            self.first_pass_round[best_round] += 1
        if best_cand is not None:
            self.first_pass_candidate[best_cand] += 1
        firsts = [a for a in rec.attempts if a.candidate == 0 and a.round == 0]
        if firsts:
            first = min(firsts, key=lambda a: a.reasoning_tokens)
            self.single_pass += int(first.judge is not None and first.judge.passed)

    def result(self) -> dict[str, Any]:
        n = self.judged_requests

        def rate(count: int) -> float | None:
            return round(count / n, 6) if n else None

        def cumulative(counter: Counter[int], upto: int, offset: int) -> dict[str, float | None]:
            out, running = {}, 0
            for v in range(upto + 1):
                running += counter.get(v, 0)
                out[str(v + offset)] = rate(running)
            return out

        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "attempts_per_request": round(self.attempts / self.requests, 4) if self.requests else None,
            "categories": dict(sorted(self.categories.items())),
            "backbones": dict(sorted(self.backbones.items())),
            "reasoning_tokens": {str(k): v for k, v in sorted(self.token_levels.items())},
            "judge_coverage": {
                "attempts_with_judge": self.judged_attempts,
                "share": round(self.judged_attempts / self.attempts, 6) if self.attempts else None,
                "judged_requests": n,
            },
            "single_pass_rate": rate(self.single_pass),
            "pass_rate_by_round": cumulative(self.first_pass_round, self.max_round, 0),
            "pass_rate_by_candidates": cumulative(self.first_pass_candidate, self.max_candidate, 1),
            "any_pass_rate": rate(n - self.never_pass),
            "never_pass_share": rate(self.never_pass),
            "cost": {
                "nfe_total": self.nfe_total,
                "nfe_per_request": round(self.nfe_total / self.requests, 4) if self.requests else None,
                "latency_s_total": round(self.latency_total, 6),
                "attempts_with_latency": self.latency_attempts,
            },
        }


def compute_stats(records: Iterable[EditRecord]) -> dict[str, Any]:
    """Statistics of valid records (see the module docstring for the definitions)."""
    acc = StatsAccumulator()
    for rec in records:
        acc.add(rec)
    return acc.result()


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable table of ``compute_stats`` output (plus reject counts when present)."""

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in d.items()) or "-"

    cov, cost = stats["judge_coverage"], stats["cost"]
    lines = [
        f"requests            {stats['requests']}",
        f"attempts            {stats['attempts']}  ({stats['attempts_per_request']} per request)",
    ]
    if "rejected" in stats:
        lines.append(f"rejected lines      {stats['rejected']}  ({counts(stats.get('reasons', {}))})")
    lines += [
        f"backbones           {counts(stats['backbones'])}",
        f"categories          {counts(stats['categories'])}",
        f"reasoning tokens    {counts(stats['reasoning_tokens'])}  (attempts per level)",
        f"judge coverage      {cov['attempts_with_judge']} attempts ({pct(cov['share']).strip()}), "
        f"{cov['judged_requests']} requests",
        f"nfe                 {cost['nfe_total']} total, {cost['nfe_per_request']} per request",
        f"latency             {cost['latency_s_total']:.1f} s total over {cost['attempts_with_latency']} attempts",
        "",
        "pass rate (judged requests)",
        f"  single attempt    {pct(stats['single_pass_rate'])}",
        f"  any attempt       {pct(stats['any_pass_rate'])}",
        f"  never passes      {pct(stats['never_pass_share'])}",
        "  by round (<= r)   "
        + "  ".join(f"r{k}: {pct(v).strip()}" for k, v in stats["pass_rate_by_round"].items()),
        "  by candidates k   "
        + "  ".join(f"k{k}: {pct(v).strip()}" for k, v in stats["pass_rate_by_candidates"].items()),
    ]
    return "\n".join(lines)
