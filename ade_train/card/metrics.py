"""CARD's loss and evaluation metrics (pure torch + scipy), shared by training, tests and reports.

Loss: negative log-likelihood over ``levels + [beyond]`` with right-censoring (a request that passed
nowhere in its own grid contributes minus the log survival mass above its grid, as in discrete-time
survival models), plus the binary cross-entropy of the token head's P(pass) of one attempt at each
reasoning-token level against the share of the request's round-0 attempts that passed there.
Metrics follow the CARD evaluation: rank agreement with the realised need, level accuracy / MAE,
coverage of the budget quantiles the runtime uses, and the token head's Brier score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ade_runtime.stats import spearman


def censored_nll(
    logits: torch.Tensor, level: torch.Tensor, censor_from: torch.Tensor, censored: torch.Tensor
) -> torch.Tensor:
    """Per-request NLL: ``-log P(level)`` or, censored, ``-log sum_{j >= censor_from} P(j)``."""
    logp = F.log_softmax(logits, dim=-1)
    classes = torch.arange(logits.shape[-1], device=logits.device)
    above = classes[None, :] >= censor_from[:, None]
    survival = torch.logsumexp(logp.masked_fill(~above, float("-inf")), dim=-1)
    exact = logp.gather(1, level.clamp_max(logits.shape[-1] - 1)[:, None]).squeeze(1)
    return -torch.where(censored, survival, exact)


def token_bce(token_logits: torch.Tensor, token_pass: torch.Tensor) -> torch.Tensor:
    """Mean BCE of P(pass) per token level against the observed pass shares (NaN targets skipped)."""
    seen = torch.isfinite(token_pass)
    if not seen.any():
        return token_logits.new_zeros(())
    return F.binary_cross_entropy_with_logits(token_logits[seen], token_pass[seen])


def card_loss(
    budget_logits: torch.Tensor,
    token_logits: torch.Tensor,
    level: torch.Tensor,
    censor_from: torch.Tensor,
    censored: torch.Tensor,
    token_pass: torch.Tensor,
    token_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, budget NLL, token BCE); the token term is 0 when no token level was logged."""
    nll = censored_nll(budget_logits, level, censor_from, censored).mean()
    tok = token_bce(token_logits, token_pass)
    return nll + token_weight * tok, nll, tok


def quantile_index(probs: torch.Tensor, q: float) -> torch.Tensor:
    """Index of the smallest level whose CDF >= q, clamped to the largest level (beyond is never a budget)."""
    cdf = probs[:, :-1].cumsum(-1)
    idx = (cdf < q - 1e-12).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 2)


def _rho_or_zero(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two tensors; 0.0 (no rank signal) when it is undefined or not finite."""
    rho = spearman(a.double().cpu().numpy(), b.double().cpu().numpy(), undefined=0.0)
    return rho if math.isfinite(rho) else 0.0


def card_metrics(
    probs: torch.Tensor,
    token_probs: torch.Tensor,
    level: torch.Tensor,
    censored: torch.Tensor,
    token_pass: torch.Tensor,
    levels: Sequence[int],
    quantiles: Sequence[float] = (0.5, 0.8, 0.9),
) -> dict[str, float]:
    """Metrics of budget probabilities against realised needs (censored requests count as beyond).

    ``spearman``: expected level vs realised level; ``acc`` / ``mae``: argmax level vs realised (MAE in
    levels); ``cov@q``: share of requests with need <= the q-quantile budget; ``budget@q``: mean attempts
    of that budget; ``token_brier``: squared error of P(pass) per token level (``token_probs``) against
    the observed pass shares ``token_pass``.
    """
    n_levels = len(levels)
    need = torch.where(censored, torch.full_like(level, n_levels), level)
    classes = torch.arange(probs.shape[-1], dtype=probs.dtype)
    expected = (probs * classes).sum(-1)
    pred = probs.argmax(-1)
    out = {
        "spearman": _rho_or_zero(expected, need.to(probs.dtype)),
        "acc": float((pred == need).float().mean()),
        "mae": float((pred - need).abs().float().mean()),
        "censored_rate": float(censored.float().mean()),
    }
    lv = torch.tensor(list(levels), dtype=torch.float32)
    for q in quantiles:
        qi = quantile_index(probs, q)
        out[f"cov@{q:g}"] = float((need <= qi).float().mean())
        out[f"budget@{q:g}"] = float(lv[qi].mean())
    seen = torch.isfinite(token_pass)
    out["token_brier"] = (
        float(((token_probs[seen] - token_pass[seen]) ** 2).mean()) if seen.any() else float("nan")
    )
    return out


def prior_probs(level: torch.Tensor, censored: torch.Tensor, n_classes: int, n: int) -> torch.Tensor:
    """The constant predictor: the training split's level frequencies (add-one smoothed), repeated ``n`` times."""
    need = torch.where(censored, torch.full_like(level, n_classes - 1), level)
    counts = torch.bincount(need, minlength=n_classes).float() + 1.0
    return (counts / counts.sum()).expand(n, n_classes)


def category_prior_probs(
    train_level: torch.Tensor,
    train_censored: torch.Tensor,
    train_categories: list[str],
    categories: list[str],
    n_classes: int,
) -> torch.Tensor:
    """The per-category prior: each category's train level frequencies, shrunk toward the constant
    prior with ``n_classes`` pseudo-requests (a small category leans on the overall frequencies; an
    unseen one gets the constant prior). One row per entry of ``categories``."""
    overall = prior_probs(train_level, train_censored, n_classes, 1)[0]
    need = torch.where(train_censored, torch.full_like(train_level, n_classes - 1), train_level)
    rows: dict[str, torch.Tensor] = {}
    for cat in sorted(set(train_categories)):
        mask = torch.tensor([c == cat for c in train_categories], dtype=torch.bool)
        counts = torch.bincount(need[mask], minlength=n_classes).float() + n_classes * overall
        rows[cat] = counts / counts.sum()
    if not categories:
        return overall.expand(0, n_classes)
    return torch.stack([rows.get(c, overall) for c in categories])


def token_pass_prior(token_pass: torch.Tensor) -> torch.Tensor:
    """Mean observed P(pass) per token level (NaN-skipping; 0.5 for a level never logged)."""
    seen = torch.isfinite(token_pass)
    total = torch.where(seen, token_pass, torch.zeros_like(token_pass)).sum(0)
    n = seen.sum(0)
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, 0.5))
