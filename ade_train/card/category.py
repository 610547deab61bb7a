"""The prior's category classifier: infer an edit's category from the request alone.

A per-category prior is a good budget predictor only when the request carries its category, and
production requests do not (``ade-edit`` / ``ade-serve`` without ``--category``). This module fits a
multinomial logistic regression over CARD's own request features (standardised with CARD's
statistics) on the training split, choosing its L2 strength by validation log-loss; the runtime then
feeds the prior a mixture of its category rows weighted by P(category | request)
(``CardPredictor._prior_predictions``). It is saved inside the CARD artifact as ``category_head``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class CategoryClassifier:
    """A fitted head: ``weight`` [C, D] and ``bias`` [C] over standardised features, classes ``names``."""

    names: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    val_log_loss: float
    val_accuracy: float

    def proba(self, z: torch.Tensor) -> torch.Tensor:
        """P(category) [N, C] for standardised feature rows ``z``."""
        return (z @ self.weight.T + self.bias).softmax(-1)

    def summary(self) -> dict:
        return {
            "classes": len(self.names),
            "l2": self.l2,
            "val_log_loss": round(self.val_log_loss, 4),
            "val_accuracy": round(self.val_accuracy, 4),
        }


def _fit(z: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, steps: int = 60) -> tuple:
    w = torch.zeros(n_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_category_classifier(
    z_train: torch.Tensor, cats_train: list[str], z_val: torch.Tensor, cats_val: list[str]
) -> CategoryClassifier | None:
    """Fit on the training split, pick the L2 strength by validation log-loss; None with < 2 classes.

    ``z_*`` are standardised feature rows; categories of validation rows unseen in training count as
    errors in the accuracy and are left out of the log-loss.
    """
    names = sorted(set(cats_train))
    if len(names) < 2:
        return None
    index = {c: i for i, c in enumerate(names)}
    y = torch.tensor([index[c] for c in cats_train])
    seen = [i for i, c in enumerate(cats_val) if c in index]
    if not seen:  # no validation row to choose by: the middle of the grid
        z_val, cats_val, seen = z_train, cats_train, list(range(len(cats_train)))
    yv = torch.tensor([index[cats_val[i]] for i in seen])
    best = None
    with torch.enable_grad():
        for l2 in L2_GRID:
            w, b = _fit(z_train, y, len(names), l2)
            logits = z_val[seen] @ w.T + b
            loss = float(F.cross_entropy(logits, yv))
            acc = float((logits.argmax(-1) == yv).float().sum()) / max(1, len(cats_val))
            if best is None or loss < best.val_log_loss:
                best = CategoryClassifier(names, w, b, l2, loss, acc)
    return best
