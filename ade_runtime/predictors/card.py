"""CARD: complexity-adaptive reasoning/attempt budget predicted per edit request.

A small MLP over request features (``features.RequestFeaturizer``) gives a distribution over the
dataset's budget levels (attempt counts ``K * R``) plus a "beyond" class for requests that passed
nowhere in the grid (right-censored), and per reasoning-token level the pass probability of one
attempt (``token_target="pass"``; older artifacts: a distribution over token levels). The runtime
takes ``quantile(q)`` as the request's attempt budget; when q falls in the "beyond" mass the
request is hopeless and gets the small calibrated ``beyond_budget`` (an early give-up that returns
the best attempt so far), never the largest level. It thinks at level t when the gain in pass
probability is worth the extra seconds: ``p_t - p_0 >= gain_per_cost * p_0 * (s_t - s_0) / s_0``
(1.0 = break-even in expected seconds per pass; calibrated on the calibration split). A per-category
prior is exported in the same format (``category_probs``) when CARD does not beat it on validation
(docs/DESIGN.md, "Budget levels"; labels in ``ade_runtime.policy.budget``). Pure torch: training
lives in ``ade_train.card`` and exports through ``save_pretrained``.

Public API::

    card = CardPredictor.from_pretrained(export_dir)
    b = card.predict("make the mug blue", image)       # BudgetPrediction
    b.quantile(0.8) -> attempts, b.reasoning_tokens, b.expected_level, b.probs, b.token_probs
    card.predict_features(x) -> list[BudgetPrediction]; card.predict_proba(x) -> (probs, token_probs)

``BudgetPrediction`` and the token choice (``choose_tokens``) are in ``budget_prediction.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ade_runtime.artifacts import CARD_KIND, CARD_NAME, load_artifact, save_artifact
from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.predictors.budget_prediction import BudgetPrediction, clauses
from ade_runtime.predictors.config_base import ArtifactConfig
from ade_runtime.predictors.features import RequestFeaturizer

KIND = CARD_KIND


@dataclass
class CardConfig(ArtifactConfig):
    """Structure of a CARD model; saved in ``card.json`` and checked on load."""

    input_dim: int = field(metadata={"help": "request feature size (RequestFeaturizer.dim)"})
    levels: list[int] = field(metadata={"help": "budget levels: sorted distinct attempt counts K*R"})
    token_levels: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "sorted distinct reasoning-token budgets"}
    )
    hidden: list[int] = field(default_factory=lambda: [128, 64], metadata={"help": "MLP hidden sizes"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after each hidden layer, in [0, 1)"})
    token_target: str = field(
        default="level",
        metadata={
            "help": "token head: 'pass' (P(pass) of one attempt per level) or 'level' (softmax choice)"
        },
    )
    token_seconds: list[float] = field(
        default_factory=list, metadata={"help": "modelled cost of one attempt per token level (trace unit)"}
    )
    gain_per_cost: float | None = field(
        default=None, metadata={"help": "think when gain >= this x p_0 x relative extra cost (None: 1.0)"}
    )
    beyond_budget: int | None = field(
        default=None,
        metadata={"help": "attempts for a hopeless request (q in the beyond mass); None: levels[0]"},
    )
    category_probs: dict[str, list[float]] | None = field(
        default=None, metadata={"help": "per-category prior: category -> level probs + beyond ('*': all)"}
    )
    category_token_pass: dict[str, list[float]] | None = field(
        default=None, metadata={"help": "per-category prior: category -> P(pass) per token level"}
    )
    label_s_max: int | None = field(
        default=None, metadata={"help": "rounds per chain of the loop-order labels (None: rectangle labels)"}
    )
    compound_parts: bool = field(
        default=False,
        metadata={
            "help": "a compound instruction (clauses joined by commas, 'and', 'then') gets at least the "
            "budget of each clause predicted alone (False in artifacts written before the rule)"
        },
    )
    offset_probs: dict[str, list[float]] | None = field(
        default=None,
        metadata={
            "help": "CARD as a residual over the label-free per-category prior: budget logits = "
            "log(sum_c P(c | request) offset_probs[c]) + the MLP's (needs categories; '*': all)"
        },
    )
    categories: list[str] | None = field(
        default=None,
        metadata={
            "help": "the prior's category classifier: its classes (a linear head over the request features); "
            "None: a request without a category gets the '*' row"
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.input_dim, int) or isinstance(self.input_dim, bool) or self.input_dim < 1:
            raise ValueError(f"CardConfig.input_dim must be a positive int, got {self.input_dim!r}")
        for name, low in (("levels", 1), ("token_levels", 0), ("hidden", 1)):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(f"CardConfig.{name} must be a list of ints, got {value!r}")
            value = [int(v) for v in value]
            setattr(self, name, value)
            if any(v < low for v in value):
                raise ValueError(f"CardConfig.{name} values must be >= {low}, got {value}")
        for name in ("levels", "token_levels"):
            value = getattr(self, name)
            if not value or value != sorted(set(value)):
                raise ValueError(f"CardConfig.{name} must be non-empty, sorted and distinct, got {value}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"CardConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if self.token_target not in ("pass", "level"):
            raise ValueError(f"CardConfig.token_target must be 'pass' or 'level', got {self.token_target!r}")
        self.token_seconds = [float(v) for v in self.token_seconds]
        if self.token_seconds and (
            len(self.token_seconds) != len(self.token_levels) or min(self.token_seconds) <= 0
        ):
            raise ValueError(
                f"CardConfig.token_seconds needs one positive cost per token level, got {self.token_seconds}"
            )
        if self.gain_per_cost is not None and not float(self.gain_per_cost) >= 0:
            raise ValueError(f"CardConfig.gain_per_cost must be >= 0 or None, got {self.gain_per_cost!r}")
        if self.beyond_budget is not None and (
            not isinstance(self.beyond_budget, int)
            or isinstance(self.beyond_budget, bool)
            or self.beyond_budget < 1
        ):
            raise ValueError(
                f"CardConfig.beyond_budget must be an int >= 1 or None, got {self.beyond_budget!r}"
            )
        for name, width in (
            ("category_probs", self.n_budget_classes),
            ("category_token_pass", len(self.token_levels)),
            ("offset_probs", self.n_budget_classes),
        ):
            table = getattr(self, name)
            if table is None:
                continue
            if not isinstance(table, dict) or "*" not in table:
                raise ValueError(f"CardConfig.{name} must be a dict with a '*' (all categories) row")
            for cat, row in table.items():
                if not isinstance(row, (list, tuple)) or len(row) != width:
                    raise ValueError(f"CardConfig.{name}[{cat!r}] must hold {width} numbers, got {row!r}")
            setattr(self, name, {str(k): [float(v) for v in row] for k, row in table.items()})
        if self.categories is not None:
            if not isinstance(self.categories, (list, tuple)) or not self.categories:
                raise ValueError(f"CardConfig.categories must be a non-empty list, got {self.categories!r}")
            self.categories = [str(c) for c in self.categories]
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"CardConfig.categories must be distinct, got {self.categories}")
            table = self.category_probs if self.category_probs is not None else self.offset_probs
            if table is None:
                raise ValueError(
                    "CardConfig.categories needs category_probs (the prior it feeds) or offset_probs"
                )
            missing = [c for c in self.categories if c not in table]
            if missing:
                raise ValueError(f"CardConfig.categories {missing} have no row in the category table")
        if self.offset_probs is not None and not self.categories:
            raise ValueError("CardConfig.offset_probs needs categories (the classifier that weighs its rows)")

    @property
    def is_prior(self) -> bool:
        """True when this artifact is the per-category prior (predictions come from the table)."""
        return self.category_probs is not None

    @property
    def n_budget_classes(self) -> int:
        """Levels plus the "beyond" class."""
        return len(self.levels) + 1


class CardModel(nn.Module):
    """MLP trunk over standardised features; heads over ``levels + [beyond]`` and token levels."""

    def __init__(self, config: CardConfig) -> None:
        super().__init__()
        self.config = config
        # feature standardisation fitted on the training split; saved with the weights
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_std", torch.ones(config.input_dim))
        layers: list[nn.Module] = []
        width = config.input_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(config.dropout)]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.budget_head = nn.Linear(width, config.n_budget_classes)
        self.token_head = nn.Linear(width, len(config.token_levels))
        # the prior's category classifier (multinomial logistic regression on the standardised features)
        self.category_head = (
            nn.Linear(config.input_dim, len(config.categories)) if config.categories else None
        )
        # residual CARD: the prior's rows it starts from (from the config, so not saved with the weights)
        offset = config.offset_probs
        rows = [offset[c] for c in config.categories] if offset is not None and config.categories else []
        self.register_buffer(
            "offset_table", torch.tensor(rows).reshape(len(rows), config.n_budget_classes), persistent=False
        )

    @torch.no_grad()
    def set_feature_stats(self, x: torch.Tensor) -> None:
        """Standardise inputs with the mean/std of ``x`` (the training features)."""
        std = x.std(0, unbiased=False)
        # features constant in training (unseen hash buckets) stay unscaled; tiny spreads are floored,
        # otherwise an unseen n-gram at run time would be blown up by 1/std
        std = torch.where(std < 1e-6, torch.ones_like(std), std.clamp_min(1e-2))
        self.feature_mean.copy_(x.mean(0))
        self.feature_std.copy_(std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(budget logits [N, levels+1], token logits [N, token levels])."""
        z = (x - self.feature_mean) / self.feature_std
        h = self.trunk(z)
        logits = self.budget_head(h)
        if len(self.offset_table):  # log of the label-free prior's mixture, then the learned residual
            w = self.category_head(z).softmax(-1)
            logits = logits + (w @ self.offset_table.to(w.dtype)).clamp_min(1e-9).log()
        return logits, self.token_head(h)

    def category_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over ``config.categories`` [N, C] (the prior's classifier; needs ``config.categories``)."""
        if self.category_head is None:
            raise InputError("this CARD artifact has no category classifier (config.categories is None)")
        return self.category_head((x - self.feature_mean) / self.feature_std)


class CardPredictor:
    """A CARD model with the featurizer it was trained with; what the loop calls."""

    def __init__(self, model: CardModel, featurizer: RequestFeaturizer) -> None:
        if model.config.input_dim != featurizer.dim:
            raise InputError(
                f"CARD expects {model.config.input_dim} features but the featurizer gives {featurizer.dim}; "
                "use the featurizer the model was trained with"
            )
        self.model = model.eval()
        self.featurizer = featurizer

    @property
    def config(self) -> CardConfig:
        return self.model.config

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CardPredictor:
        """Run the MLP on ``device`` (features are computed on CPU and moved); returns self."""
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Budget probs [N, levels+1] and token probs [N, token levels] for feature rows ``x``."""
        x = self._check_features(x)
        self.model.eval()
        ref = self.model.feature_mean
        b, t = self.model(x.to(device=ref.device, dtype=ref.dtype))
        b, t = b.float().cpu(), t.float().cpu()
        return b.softmax(-1), (t.sigmoid() if self.config.token_target == "pass" else t.softmax(-1))

    def _prediction(self, probs: list[float], tprobs: list[float], **origin: Any) -> BudgetPrediction:
        cfg = self.config
        passes = cfg.token_target == "pass" or cfg.category_token_pass is not None
        return BudgetPrediction(
            list(cfg.levels),
            probs,
            list(cfg.token_levels),
            tprobs,
            token_pass=list(tprobs) if passes else None,
            token_seconds=list(cfg.token_seconds) or None,
            gain_per_cost=cfg.gain_per_cost,
            beyond_budget=cfg.beyond_budget,
            **origin,
        )

    @torch.no_grad()
    def category_proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(category | request) [N, C] over ``config.categories`` from feature rows ``x``."""
        x = self._check_features(x)
        ref = self.model.feature_mean
        return self.model.category_logits(x.to(device=ref.device, dtype=ref.dtype)).float().cpu().softmax(-1)

    def _check_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise InputError(f"features must be [N, {self.config.input_dim}], got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("features contain NaN or infinity; check the encoders' inputs")
        return x

    def _needs_features(self, categories: list[str | None] | None, n: int) -> bool:
        """False only for a prior whose every row has a usable category (or that cannot infer one)."""
        cfg = self.config
        if not cfg.is_prior:
            return True
        if not cfg.categories:
            return False
        cats = categories if categories is not None else [None] * n
        return any(c is None or str(c) not in cfg.category_probs for c in cats)

    def _prior_predictions(self, x: torch.Tensor | None, cats: list[str | None]) -> list[BudgetPrediction]:
        """The prior's rows: the given category's, else the classifier's mixture, else the '*' row."""
        cfg = self.config
        table, tok = cfg.category_probs, cfg.category_token_pass or {}
        default_tok = tok.get("*", [1.0] * len(cfg.token_levels))
        p_cat = self.category_proba(x) if x is not None and cfg.categories else None
        out = []
        for i, c in enumerate(cats):
            if c is not None and str(c) in table:
                c = str(c)
                out.append(
                    self._prediction(
                        list(table[c]), list(tok.get(c, default_tok)), source="prior:given", category=c
                    )
                )
            elif p_cat is not None:  # a soft mixture of the rows: no label is needed at run time
                w = p_cat[i]
                rows = torch.tensor([table[k] for k in cfg.categories])
                trows = torch.tensor([tok.get(k, default_tok) for k in cfg.categories])
                top = int(w.argmax())
                out.append(
                    self._prediction(
                        (w @ rows).tolist(),
                        (w @ trows).tolist(),
                        source="prior:inferred",
                        category=cfg.categories[top],
                        category_confidence=float(w[top]),
                    )
                )
            else:
                out.append(self._prediction(list(table["*"]), list(default_tok), source="prior:all"))
        return out

    def predict_features(
        self, x: torch.Tensor, categories: list[str | None] | None = None
    ) -> list[BudgetPrediction]:
        """Predictions for feature rows.

        A per-category prior reads ``categories`` (a caller's label, used and recorded); a request
        without one gets the classifier's mixture over the categories when the artifact has one
        (``config.categories``), else the all-categories row. CARD ignores ``categories``.
        """
        cfg = self.config
        if cfg.category_probs is not None:
            cats = list(categories) if categories is not None else [None] * len(x)
            return self._prior_predictions(x if self._needs_features(cats, len(cats)) else None, cats)
        probs, tprobs = self.predict_proba(x)
        return [self._prediction(p.tolist(), tp.tolist()) for p, tp in zip(probs, tprobs, strict=True)]

    def predict(self, instruction: str, image: Any, category: str | None = None) -> BudgetPrediction:
        """Budget for one request; ``image`` is a PIL image or a path. ``category`` is read by the prior only.

        With ``config.compound_parts`` a compound instruction's clauses are predicted too (same image)
        and its budget is at least each clause's (``BudgetPrediction.parts``)."""
        if not self._needs_features([category], 1):  # the table's row needs no features
            return self.predict_features(torch.zeros(1, self.config.input_dim), [category])[0]
        parts = clauses(instruction) if self.config.compound_parts else []
        texts = [instruction, *parts]
        x = self.featurizer.featurize(texts, [image] * len(texts))
        whole, *alone = self.predict_features(x, [category] * len(texts))
        whole.parts = alone
        return whole

    def predict_many(
        self, instructions: list[str], images: list[Any], categories: list[str | None] | None = None
    ) -> list[BudgetPrediction]:
        """Budgets for a batch of requests (one image per instruction)."""
        if not self._needs_features(categories, len(instructions)):
            return self.predict_features(torch.zeros(len(instructions), self.config.input_dim), categories)
        if self.config.compound_parts:
            cats = list(categories) if categories is not None else [None] * len(instructions)
            return [self.predict(t, im, c) for t, im, c in zip(instructions, images, cats, strict=True)]
        return self.predict_features(self.featurizer.featurize(list(instructions), list(images)), categories)

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        data_fingerprint: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Path:
        """Write ``card.safetensors`` + ``card.json`` into ``directory``; returns the JSON path."""
        clean = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        return save_artifact(
            directory,
            CARD_NAME,
            kind=KIND,
            class_name=type(self.model).__name__,
            config=self.config.to_dict(),
            tensors=dict(self.model.state_dict()),
            feature_spec=self.featurizer.spec(),
            data_fingerprint=data_fingerprint,
            metrics=clean or None,
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, featurizer: RequestFeaturizer | None = None
    ) -> CardPredictor:
        """Load an exported CARD; the featurizer is rebuilt from the artifact unless given (then checked)."""
        art = load_artifact(
            directory,
            CARD_NAME,
            kind=KIND,
            encoder_fingerprints=featurizer.fingerprints if featurizer is not None else None,
        )
        where = str(art.path)
        config = CardConfig.from_dict(dict(art.config), where)
        if featurizer is None:
            featurizer = RequestFeaturizer.from_spec(art.feature_spec or {}, where)
        model = CardModel(config)
        try:
            model.load_state_dict(art.tensors, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{where}: weights do not match the config: {exc}; re-export") from None
        if config.input_dim != featurizer.dim:
            raise ArtifactError(
                f"{where}: config.input_dim {config.input_dim} != featurizer dim {featurizer.dim}"
            )
        return cls(model, featurizer)
