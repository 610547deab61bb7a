"""CARD: complexity-adaptive reasoning/attempt budget predicted per edit request.

A small MLP over request features (``features.RequestFeaturizer``) gives a distribution over the
dataset's budget levels (attempt counts ``K * R``) plus a "beyond" class for requests that passed
nowhere in the grid (right-censored), and a distribution over reasoning-token levels. The runtime
takes ``quantile(q)`` as the request's attempt budget and the most probable token level
(docs/DESIGN.md, "Budget levels"; labels in ``ade_runtime.policy.budget``). Pure torch: training
lives in ``ade_train.card`` and exports through ``save_pretrained``.

Public API::

    card = CardPredictor.from_pretrained(export_dir)
    b = card.predict("make the mug blue", image)       # BudgetPrediction
    b.quantile(0.8) -> attempts, b.reasoning_tokens, b.expected_level, b.probs, b.token_probs
    card.predict_features(x) -> list[BudgetPrediction]; card.predict_proba(x) -> (probs, token_probs)
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
from ade_runtime.policy.budget import quantile_level
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
        h = self.trunk((x - self.feature_mean) / self.feature_std)
        return self.budget_head(h), self.token_head(h)


@dataclass
class BudgetPrediction:
    """CARD's output for one request."""

    levels: list[int]  # attempt counts, ascending
    probs: list[float]  # P(level) for each level, then P(beyond)
    token_levels: list[int]
    token_probs: list[float]

    def quantile(self, q: float) -> int:
        """Attempt budget: smallest level whose CDF >= q (the largest level when q is in the beyond mass)."""
        return quantile_level(self.levels, self.probs, q)

    @property
    def reasoning_tokens(self) -> int:
        """The most probable reasoning-token level."""
        return self.token_levels[max(range(len(self.token_probs)), key=self.token_probs.__getitem__)]

    @property
    def expected_level(self) -> float:
        """Expected level index (0 = cheapest level, ``len(levels)`` = beyond)."""
        return float(sum(i * p for i, p in enumerate(self.probs)))

    @property
    def p_beyond(self) -> float:
        return float(self.probs[-1])


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
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise InputError(f"features must be [N, {self.config.input_dim}], got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("features contain NaN or infinity; check the encoders' inputs")
        self.model.eval()
        ref = self.model.feature_mean
        b, t = self.model(x.to(device=ref.device, dtype=ref.dtype))
        return b.float().softmax(-1).cpu(), t.float().softmax(-1).cpu()

    def predict_features(self, x: torch.Tensor) -> list[BudgetPrediction]:
        probs, tprobs = self.predict_proba(x)
        cfg = self.config
        return [
            BudgetPrediction(list(cfg.levels), p.tolist(), list(cfg.token_levels), tp.tolist())
            for p, tp in zip(probs, tprobs, strict=True)
        ]

    def predict(self, instruction: str, image: Any) -> BudgetPrediction:
        """Budget for one request; ``image`` is a PIL image or a path."""
        return self.predict_features(self.featurizer.featurize([instruction], [image]))[0]

    def predict_many(self, instructions: list[str], images: list[Any]) -> list[BudgetPrediction]:
        """Budgets for a batch of requests (one image per instruction)."""
        return self.predict_features(self.featurizer.featurize(list(instructions), list(images)))

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
