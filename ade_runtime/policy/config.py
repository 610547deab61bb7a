"""Configuration of the adaptive policy and the named baselines behind the same interface.

``PolicyConfig`` holds the thresholds calibration chooses (tau_high, tau_low, S_max, the
CARD quantile, the pruning threshold) and the switches used for ablations. ``preset``
turns a policy name (``ade``, ``best_of_8``, ``confidence_stop`` ...) into a config, so
replay, benchmarks and the live loop run exactly the same decision rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

POLICY_NAMES = (
    "single",
    "best_of_4",
    "best_of_8",
    "best_of_8_oracle",
    "fixed_chain",
    "confidence_stop",
    "card_only",
    "ade",
    "oracle",
)


@dataclass(frozen=True)
class PolicyConfig:
    """Decision rules of one policy. Thresholds apply to the calibrated confidence P(pass)."""

    tau_high: float = 0.8  # stop the request as soon as an attempt's confidence reaches this
    tau_low: float = 0.15  # below this an attempt is not worth refining: start a fresh candidate
    s_max: int = 3  # rounds per candidate at most (round 0 plus s_max - 1 refinements)
    card_quantile: float = 0.8  # quantile of CARD's budget distribution used as the attempt budget
    prune_threshold: float | None = None  # preview confidence below which a candidate is pruned
    default_budget: int = 8  # attempt budget when CARD is off, missing or failed
    max_candidates: int = 8  # candidates at most, whatever the budget
    use_card: bool = True  # take the attempt budget and reasoning tokens from CARD
    early_stop: bool = True  # stop at tau_high
    refine: bool = True  # refinement rounds with critique feedback (False: fresh samples only)
    use_mask: bool = True  # confine refinement rounds to the critique / SRM region
    select: str = "confidence"  # how the answer is picked: "confidence" or "judge" (offline oracle)
    fixed_rounds: bool = False  # run every candidate to s_max rounds regardless of confidence
    reasoning_tokens: int | None = None  # thinking budget when CARD does not choose it (None: no thinking)

    def __post_init__(self) -> None:
        for name in ("tau_high", "tau_low", "card_quantile"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"PolicyConfig.{name} must be a number in [0, 1], got {v!r}")
        if self.tau_low > self.tau_high:
            raise ValueError(
                f"PolicyConfig.tau_low ({self.tau_low}) must not exceed tau_high ({self.tau_high})"
            )
        if self.card_quantile <= 0.0:
            raise ValueError("PolicyConfig.card_quantile must be > 0")
        for name in ("s_max", "default_budget", "max_candidates"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PolicyConfig.{name} must be an int >= 1, got {v!r}")
        if self.prune_threshold is not None and not (0.0 <= self.prune_threshold <= 1.0):
            raise ValueError(
                f"PolicyConfig.prune_threshold must be in [0, 1] or None, got {self.prune_threshold!r}"
            )
        rt = self.reasoning_tokens
        if rt is not None and (not isinstance(rt, int) or isinstance(rt, bool) or rt < 0):
            raise ValueError(f"PolicyConfig.reasoning_tokens must be an int >= 0 or None, got {rt!r}")
        if self.select not in ("confidence", "judge"):
            raise ValueError(f"PolicyConfig.select must be 'confidence' or 'judge', got {self.select!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build from a saved dict; unknown keys are ignored so newer configs still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def preset(name: str, base: PolicyConfig | None = None) -> PolicyConfig:
    """The config of a named policy, sharing ``base``'s calibrated thresholds where it uses them.

    ``best_of_N`` (any N), ``best_of_N_oracle``, ``single``, ``fixed_chain``,
    ``confidence_stop`` (early stop without CARD, ADE-CoT-like), ``card_only`` (CARD budgets
    without early stop, PhysEdit-like) and ``ade`` (everything). ``oracle`` is replay-only.
    A suffix ``@T`` fixes the reasoning budget of a policy that does not take it from CARD
    (``single@512``, ``best_of_4@512``: the thinking-mode baselines of a reasoning backbone).
    """
    base = base or PolicyConfig()
    m = re.fullmatch(r"(.+)@(\d+)", name)
    if m:
        cfg = preset(m.group(1), base)
        if cfg.use_card:
            raise ValueError(
                f"{name!r}: '@T' fixes reasoning tokens, but {m.group(1)!r} takes them from CARD"
            )
        return replace(cfg, reasoning_tokens=int(m.group(2)))
    off = dict(use_card=False, early_stop=False, refine=False, prune_threshold=None, use_mask=False)
    m = re.fullmatch(r"best_of_(\d+)(_oracle)?", name)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"best_of_N needs N >= 1, got {name!r}")
        return replace(
            base,
            **off,
            s_max=1,
            default_budget=n,
            max_candidates=n,
            select="judge" if m.group(2) else "confidence",
        )
    if name == "single":
        return replace(base, **off, s_max=1, default_budget=1, max_candidates=1)
    if name == "fixed_chain":
        return replace(
            base,
            **{**off, "refine": True, "use_mask": True},
            default_budget=base.s_max,
            max_candidates=1,
            fixed_rounds=True,
        )
    if name == "confidence_stop":
        return replace(base, use_card=False)
    if name == "card_only":
        return replace(base, early_stop=False, prune_threshold=None, fixed_rounds=True)
    if name == "ade":
        return base
    if name == "oracle":
        raise ValueError(
            "'oracle' is not a runnable policy: it exists only in replay (cheapest passing attempt)"
        )
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)} or best_of_N")
