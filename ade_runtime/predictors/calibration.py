"""Calibrated confidence P(pass) from online signals, and the policy thresholds chosen with it.

The adaptive loop stops, refines or abandons a candidate by comparing a *calibrated* pass
probability with ``tau_high`` / ``tau_low`` (docs/DESIGN.md, "The adaptive policy"). This module
is the runtime half of that calibration: pure torch, no scikit-learn. ``ade_train/calibrate.py``
fits the maps with scikit-learn and exports their parameters; the formulas here reproduce

- ``"logistic"``: ``sklearn.pipeline.Pipeline(StandardScaler, LogisticRegression).predict_proba``,
- ``"isotonic"``: ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip").predict`` over one
  feature (linear interpolation between the fitted thresholds, clipped at the ends),
- ``"logistic+isotonic"``: ``CalibratedClassifierCV(FrozenEstimator(pipeline), method="isotonic")``,
  i.e. the isotonic map applied to the logistic decision function (sklearn/calibration.py).

Missing evidence. A feature that is NaN, +-inf or absent is *missing*; it never yields a confident
value. When a feature of the primary map is missing (typically the critique probability: an attempt
pruned before producing an image, or a critique that failed), the *fallback* map over the cheap
scores only is used (stored in the same artifact). When the fallback cannot be applied either, the
result is ``missing_confidence`` (0.0 by default): below every ``tau_high``, so the loop never stops
on it, and below any attempt with evidence, so the loop never selects it over one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.policy.config import PolicyConfig
from ade_runtime.predictors.config_base import ArtifactConfig, config_field

METHODS = ("logistic", "isotonic", "logistic+isotonic")
_HEADS = ("primary", "fallback")
_REQUIRED = {
    "logistic": ("mean", "scale", "weight", "bias"),
    "isotonic": ("iso_x", "iso_y"),
    "logistic+isotonic": ("mean", "scale", "weight", "bias", "iso_x", "iso_y"),
}


def _as_policy(policy: Any) -> PolicyConfig | None:
    if policy is None or isinstance(policy, PolicyConfig):
        return policy
    if isinstance(policy, Mapping):
        return PolicyConfig.from_dict(policy, "CalibrationConfig.policy", error=InputError)
    raise InputError(
        f"CalibrationConfig.policy: expected a PolicyConfig or a dict, got {type(policy).__name__}"
    )


@dataclass
class CalibrationConfig(ArtifactConfig):
    """Structure of an exported calibration (saved as ``calibration.json``).

    feature_names: online signals the primary map reads, in column order (e.g. clip_t, clip_i, critique).
    method: how the primary map turns features into P(pass): one of METHODS.
    fallback_feature_names: cheap signals of the fallback map, used when a primary feature is missing;
        empty = no fallback (missing evidence gives ``missing_confidence``).
    fallback_method: method of the fallback map.
    missing_confidence: value returned when no map can be applied (never confident; see module doc).
    policy: the thresholds chosen by replay with this calibrator (tau_high, tau_low, s_max,
        card_quantile, prune_threshold, ...) as the runtime's PolicyConfig fields.
    """

    feature_names: tuple[str, ...] = config_field("online signals the primary map reads, in column order")
    method: str = config_field(
        "how the primary map turns features into P(pass): one of METHODS", default="logistic"
    )
    fallback_feature_names: tuple[str, ...] = config_field(
        "cheap signals of the fallback map, used when a primary feature is missing", default=()
    )
    fallback_method: str = config_field("method of the fallback map", default="logistic")
    missing_confidence: float = config_field("P(pass) returned when no map can be applied", default=0.0)
    policy: PolicyConfig | None = config_field(
        "thresholds chosen by replay with this calibrator", default=None
    )
    claim: dict | None = config_field(
        "what calibration certified for ``policy`` (status, claim, risk, margin, delta, n_certify, reference, "
        "gpu_second_share); served traces record it under meta.ade.claim",
        default=None,
    )

    def __post_init__(self) -> None:
        self.feature_names = tuple(str(f) for f in self.feature_names)
        self.fallback_feature_names = tuple(str(f) for f in self.fallback_feature_names)
        self.policy = _as_policy(self.policy)
        if not self.feature_names:
            raise InputError("CalibrationConfig.feature_names is empty; name at least one online signal")
        for name, feats in (
            ("feature_names", self.feature_names),
            ("fallback_feature_names", self.fallback_feature_names),
        ):
            if len(set(feats)) != len(feats):
                raise InputError(
                    f"CalibrationConfig.{name} has duplicates: {list(feats)}; list each signal once"
                )
        for name, method, feats in (
            ("method", self.method, self.feature_names),
            ("fallback_method", self.fallback_method, self.fallback_feature_names),
        ):
            if method not in METHODS:
                raise InputError(f"CalibrationConfig.{name}={method!r}; choose one of {list(METHODS)}")
            if method == "isotonic" and len(feats) > 1:
                raise InputError(
                    f"CalibrationConfig.{name}='isotonic' maps one signal, got {len(feats)} ({list(feats)}); "
                    "use 'logistic+isotonic' for several"
                )
        extra = [f for f in self.fallback_feature_names if f not in self.feature_names]
        if extra:
            raise InputError(
                f"CalibrationConfig.fallback_feature_names {extra} are not in feature_names "
                f"{list(self.feature_names)}; the fallback reads a subset of the primary signals"
            )
        if not (0.0 <= self.missing_confidence <= 1.0) or math.isnan(self.missing_confidence):
            raise InputError(
                f"CalibrationConfig.missing_confidence={self.missing_confidence}; use a value in [0, 1]"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "method": self.method,
            "fallback_feature_names": list(self.fallback_feature_names),
            "fallback_method": self.fallback_method,
            "missing_confidence": float(self.missing_confidence),
            "policy": None if self.policy is None else self.policy.to_dict(),
            **({"claim": dict(self.claim)} if self.claim is not None else {}),  # absent in older exports
        }


def interp_clip(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Linear interpolation through (xp, fp), clipped to [xp[0], xp[-1]] (IsotonicRegression.predict)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    x = x.clamp(xp[0], xp[-1])
    hi = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    lo = hi - 1
    x0, x1, y0, y1 = xp[lo], xp[hi], fp[lo], fp[hi]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class CalibrationHead(nn.Module):
    """One map from a feature vector [N, F] to P(pass) [N]; parameters exported from scikit-learn."""

    def __init__(self, method: str, n_features: int, tensors: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise InputError(f"calibration method {method!r}; choose one of {list(METHODS)}")
        self.method = method
        t = dict(tensors or {})
        missing = [k for k in _REQUIRED[method] if tensors is not None and k not in t]
        if missing:
            raise ArtifactError(
                f"calibration method {method!r} needs tensors {missing}; re-export the calibration"
            )
        f64 = torch.float64
        self.register_buffer("mean", torch.as_tensor(t.get("mean", torch.zeros(n_features)), dtype=f64))
        self.register_buffer("scale", torch.as_tensor(t.get("scale", torch.ones(n_features)), dtype=f64))
        self.register_buffer("weight", torch.as_tensor(t.get("weight", torch.zeros(n_features)), dtype=f64))
        self.register_buffer("bias", torch.as_tensor(t.get("bias", torch.zeros(1)), dtype=f64).reshape(1))
        self.register_buffer("iso_x", torch.as_tensor(t.get("iso_x", torch.zeros(1)), dtype=f64).reshape(-1))
        self.register_buffer("iso_y", torch.as_tensor(t.get("iso_y", torch.zeros(1)), dtype=f64).reshape(-1))
        for name in ("mean", "scale", "weight"):
            if getattr(self, name).shape != (n_features,):
                raise ArtifactError(
                    f"calibration tensor {name!r} has shape {tuple(getattr(self, name).shape)}, "
                    f"expected ({n_features},) for {n_features} features"
                )
        if self.iso_x.shape != self.iso_y.shape:
            raise ArtifactError(
                f"calibration iso_x {tuple(self.iso_x.shape)} and iso_y {tuple(self.iso_y.shape)} differ"
            )

    def decision(self, x: Tensor) -> Tensor:
        """The logistic decision function w . (x - mean) / scale + b."""
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        if self.method == "logistic":
            return torch.sigmoid(self.decision(x))
        if self.method == "isotonic":
            return interp_clip(x[:, 0], self.iso_x, self.iso_y)
        return interp_clip(self.decision(x), self.iso_x, self.iso_y)

    def tensors(self) -> dict[str, Tensor]:
        """The exported parameters (only those the method uses)."""
        return {k: getattr(self, k).detach().clone() for k in _REQUIRED[self.method]}


class Calibrator(nn.Module):
    """Calibrated P(pass) from online signals, plus the policy thresholds chosen with it.

    ``predict_proba({"clip_t": .27, "clip_i": .88, "critique": .71}) -> float`` or
    ``predict_proba(Tensor[N, F]) -> Tensor[N]`` with columns in ``feature_names`` order.
    """

    def __init__(
        self,
        config: CalibrationConfig,
        primary: Mapping[str, Tensor] | None = None,
        fallback: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.primary = CalibrationHead(config.method, len(config.feature_names), primary)
        self.fallback = (
            CalibrationHead(config.fallback_method, len(config.fallback_feature_names), fallback)
            if config.fallback_feature_names
            else None
        )
        self._fallback_cols = [config.feature_names.index(f) for f in config.fallback_feature_names]

    @property
    def feature_names(self) -> list[str]:
        return list(self.config.feature_names)

    @property
    def policy(self) -> PolicyConfig:
        """The thresholds chosen by replay with this calibrator (``ade_runtime.policy.PolicyConfig``)."""
        if self.config.policy is None:
            raise ArtifactError(
                "this calibration holds no policy thresholds; run ade-train calibrate to choose them"
            )
        return self.config.policy

    def features_tensor(self, rows: list[Mapping[str, float | None]]) -> Tensor:
        """Stack feature dicts into [N, F] in ``feature_names`` order; absent or None -> NaN (missing)."""
        out = torch.full((len(rows), len(self.config.feature_names)), float("nan"), dtype=torch.float64)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.config.feature_names):
                v = row.get(name)
                if v is None:
                    continue
                try:
                    out[i, j] = float(v)
                except (TypeError, ValueError):
                    raise InputError(
                        f"Calibrator: feature {name!r} is {v!r}, not a number; pass floats (NaN when missing)"
                    ) from None
        return out

    @torch.no_grad()
    def predict_proba(self, features: Mapping[str, float | None] | Tensor) -> float | Tensor:
        """Calibrated P(pass); missing (NaN/inf/absent) features select the fallback, see module doc."""
        if isinstance(features, Mapping):
            return float(self.predict_proba(self.features_tensor([features]))[0])
        x = torch.as_tensor(features, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != len(self.config.feature_names):
            raise InputError(
                f"Calibrator.predict_proba: expected a tensor [N, {len(self.config.feature_names)}] with columns "
                f"{self.feature_names}, got shape {tuple(x.shape)}"
            )
        finite = torch.isfinite(x)
        out = torch.full((x.shape[0],), float(self.config.missing_confidence), dtype=torch.float64)
        ok = finite.all(dim=1)
        if ok.any():
            out[ok] = self.primary(x[ok])
        if self.fallback is not None:
            fb = ~ok & finite[:, self._fallback_cols].all(dim=1)
            if fb.any():
                out[fb] = self.fallback(x[fb][:, self._fallback_cols])
        return out.clamp(0.0, 1.0)

    def uses_fallback(self, features: Mapping[str, float | None]) -> str:
        """Which map answers these features: "primary", "fallback" or "missing"."""
        x = self.features_tensor([features])[0]
        if torch.isfinite(x).all():
            return "primary"
        if self.fallback is not None and torch.isfinite(x[self._fallback_cols]).all():
            return "fallback"
        return "missing"

    def tensors(self) -> dict[str, Tensor]:
        out = {f"primary.{k}": v for k, v in self.primary.tensors().items()}
        if self.fallback is not None:
            out.update({f"fallback.{k}": v for k, v in self.fallback.tensors().items()})
        return out

    def save_pretrained(
        self, directory: str | Path, *, metrics: dict | None = None, data_fingerprint: str | None = None
    ) -> Path:
        """Write ``calibration.safetensors`` + ``calibration.json`` into ``directory`` (atomic)."""
        from ade_runtime.artifacts import CALIBRATION_KIND, CALIBRATION_NAME, save_artifact

        return save_artifact(
            directory,
            CALIBRATION_NAME,
            kind=CALIBRATION_KIND,
            class_name=type(self).__name__,
            config=self.config.to_dict(),
            tensors=self.tensors(),
            feature_spec={
                "features": self.feature_names,
                "fallback": list(self.config.fallback_feature_names),
            },
            data_fingerprint=data_fingerprint,
            metrics=metrics,
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Calibrator:
        """Load the calibration exported into ``directory``."""
        from ade_runtime.artifacts import CALIBRATION_KIND, CALIBRATION_NAME, load_artifact

        art = load_artifact(
            directory, CALIBRATION_NAME, kind=CALIBRATION_KIND, required_config_keys=("method",)
        )
        config = CalibrationConfig.from_dict(art.config, str(art.path))
        heads: dict[str, dict[str, Tensor]] = {h: {} for h in _HEADS}
        for key, value in art.tensors.items():
            head, _, name = key.partition(".")
            if head not in heads:
                raise ArtifactError(
                    f"{Path(directory) / CALIBRATION_NAME}.safetensors: unknown tensor {key!r}"
                )
            heads[head][name] = value
        return cls(config, heads["primary"], heads["fallback"] or None)
