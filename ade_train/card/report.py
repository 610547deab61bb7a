"""The budget/coverage curve of a trained CARD against the constant prior, as a PNG for W&B and the docs.

For quantiles q in (0, 1), CARD's per-request q-quantile budget is compared with the prior's (the
training split's level frequencies): x = mean attempts granted, y = share of test requests whose
realised need is within the budget. A useful CARD lies above the prior's curve (more coverage for
the same mean budget); the ceiling is 1 - censored rate.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ade_train.card.metrics import prior_probs, quantile_index


def coverage_curve(
    probs: torch.Tensor, need: torch.Tensor, levels: list[int], qs: torch.Tensor
) -> tuple[list[float], list[float]]:
    """(mean budget in attempts, coverage) for each quantile in ``qs``."""
    lv = torch.tensor(levels, dtype=torch.float32)
    budgets, covs = [], []
    for q in qs.tolist():
        qi = quantile_index(probs, q)
        budgets.append(float(lv[qi].mean()))
        covs.append(float((need <= qi).float().mean()))
    return budgets, covs


def plot_coverage(
    path: str | Path,
    probs: torch.Tensor,
    level: torch.Tensor,
    censored: torch.Tensor,
    levels: list[int],
    train_level: torch.Tensor,
    train_censored: torch.Tensor,
) -> Path:
    """Write the curve of CARD and of the prior on one split to ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    need = torch.where(censored, torch.full_like(level, len(levels)), level)
    qs = torch.linspace(0.05, 0.99, 40)
    prior = prior_probs(train_level, train_censored, len(levels) + 1, len(probs))
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    for name, p, style in (("CARD", probs, "-"), ("constant prior", prior, "--")):
        x, y = coverage_curve(p, need, levels, qs)
        ax.plot(x, y, style, marker=".", label=name)
    ax.axhline(1 - float(censored.float().mean()), color="grey", lw=0.8, label="ceiling (1 - censored)")
    ax.set_xlabel("mean attempt budget")
    ax.set_ylabel("share of requests covered")
    ax.set_title("CARD budget vs coverage (test split)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
