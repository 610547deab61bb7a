"""Configuration of the adaptive policy and the named baselines behind the same interface.

``PolicyConfig`` holds the thresholds calibration chooses (tau_high, tau_low, S_max, the
CARD quantile, the pruning threshold) and the switches used for ablations. ``preset``
turns a policy name (``ade``, ``best_of_8``, ``confidence_stop`` ...) into a config, so
replay, benchmarks and the live loop run exactly the same decision rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from ade_runtime.predictors.config_base import ArtifactConfig, config_field

# The denoising step whose one-step preview decides pruning, when a backbone does not name its own;
# replay charges the NFE up to it for a pruned candidate (a record's meta.preview_nfe overrides).
DEFAULT_PREVIEW_STEP = 4

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
class PolicyConfig(ArtifactConfig):
    """Decision rules of one policy. Thresholds apply to the calibrated confidence P(pass)."""

    tau_high: float = config_field(
        "stop the request as soon as an attempt's confidence reaches this", default=0.8
    )
    tau_low: float = config_field(
        "below this an attempt is not worth refining: start a fresh candidate", default=0.15
    )
    s_max: int = config_field("rounds per candidate at most (round 0 plus s_max - 1 refinements)", default=3)
    card_quantile: float = config_field(
        "quantile of CARD's budget distribution used as the attempt budget", default=0.8
    )
    prune_threshold: float | None = config_field(
        "preview confidence below which a candidate is pruned (None: no pruning)", default=None
    )
    default_budget: int = config_field("attempt budget when CARD is off, missing or failed", default=8)
    card_cap: int | None = config_field(
        "with CARD, a fixed budget it works within: no request gets more, and a request CARD calls "
        "hopeless (its need's quantile lies beyond every level) gets all of it; None: CARD's budgets and "
        "its calibrated give-up budget (beyond_budget)",
        default=None,
    )
    max_candidates: int = config_field("candidates at most, whatever the budget", default=8)
    use_card: bool = config_field("take the attempt budget and reasoning tokens from CARD", default=True)
    early_stop: bool = config_field("stop at tau_high", default=True)
    refine: bool = config_field(
        "refinement rounds with critique feedback (False: fresh samples only)", default=True
    )
    use_mask: bool = config_field("confine refinement rounds to the critique / SRM region", default=True)
    select: str = config_field(
        "how the answer is picked: 'confidence' or 'judge' (offline oracle)", default="confidence"
    )
    fixed_rounds: bool = config_field(
        "run every candidate to s_max rounds regardless of confidence", default=False
    )
    reasoning_tokens: int | None = config_field(
        "thinking budget when CARD does not choose it (None: no thinking)", default=None
    )
    verify_band: tuple[float, float] | None = config_field(
        "the verifier cascade: the expensive verifier (a VLM reward model) checks an attempt only when the "
        "cheap-signal confidence is within [low, high]; None: it checks every finished attempt",
        default=None,
    )

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
        hb = self.card_cap
        if hb is not None and (not isinstance(hb, int) or isinstance(hb, bool) or hb < 1):
            raise ValueError(f"PolicyConfig.card_cap must be an int >= 1 or None, got {hb!r}")
        rt = self.reasoning_tokens
        if rt is not None and (not isinstance(rt, int) or isinstance(rt, bool) or rt < 0):
            raise ValueError(f"PolicyConfig.reasoning_tokens must be an int >= 0 or None, got {rt!r}")
        band = self.verify_band
        if band is not None:
            try:
                lo, hi = (float(v) for v in band)
            except (TypeError, ValueError):
                raise ValueError(
                    f"PolicyConfig.verify_band must be [low, high] or None, got {band!r}"
                ) from None
            if not (0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"PolicyConfig.verify_band must satisfy 0 <= low <= high <= 1, got {band!r}")
            object.__setattr__(self, "verify_band", (lo, hi))
        if self.select not in ("confidence", "judge"):
            raise ValueError(f"PolicyConfig.select must be 'confidence' or 'judge', got {self.select!r}")


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
            verify_band=None,  # the strongest Best-of-N: every candidate checked by the whole verifier stack
        )
    if name == "single":
        return replace(base, **off, s_max=1, default_budget=1, max_candidates=1, verify_band=None)
    if name == "fixed_chain":
        return replace(
            base,
            **{**off, "refine": True, "use_mask": True},
            s_max=max(2, base.s_max),  # a chain: at least one refinement, even when S_max = 1 was certified
            default_budget=max(2, base.s_max),
            max_candidates=1,
            fixed_rounds=True,
        )
    # the switches that define a baseline are set, not inherited: a conservative export (Best-of-8 as
    # the policy) must not turn confidence_stop into another Best-of-8
    if name == "confidence_stop":
        return replace(
            base, use_card=False, early_stop=True, refine=True, fixed_rounds=False, select="confidence"
        )
    if name == "card_only":
        return replace(
            base, use_card=True, early_stop=False, refine=True, prune_threshold=None, fixed_rounds=True,
            select="confidence",
        )  # fmt: skip
    if name == "ade":
        return base
    if name == "oracle":
        raise ValueError(
            "'oracle' is not a runnable policy: it exists only in replay (cheapest passing attempt)"
        )
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)} or best_of_N")
