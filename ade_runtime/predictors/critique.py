"""The DINOv2 critique head: a millisecond stand-in for an expensive offline judge.

Given an edit attempt, its source image and the instruction, the head predicts the probability
that the attempt passes and a patch-level flaw map over the flaw kinds seen in training (plus
"none"). The map's thresholded connected regions become the top flaws (kind + box), the
refinement prompt with spatial feedback (``ade_runtime.feedback.feedback_prompt``) and a mask
that confines the next refinement round. It follows the critique-then-refine pattern of
self-refinement for editing and uses DINOv2 patch tokens (Oquab et al., 2023,
``transformers/models/dinov2/modeling_dinov2.py``) from a frozen or trained encoder.

Pure torch + numpy (region geometry in ``regions.py``): the training side (``ade_train/critique/``) fits the head; the loop only
loads it with ``CritiquePredictor.from_pretrained(export_dir)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ade_runtime.artifacts import CRITIQUE_KIND
from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.predictors.config_base import ArtifactConfig
from ade_runtime.predictors.config_base import config_field as _arg
from ade_runtime.predictors.regions import (  # noqa: F401  (re-exported: the head's public helpers)
    crop_window,
    flaw_regions,
    from_view,
    region_mask,
    to_view,
)
from ade_runtime.traces.records import Flaw

NONE_KIND = "none"  # index 0 of the per-patch classes: "no flaw here"
COMBINE_MODES = ("union", "intersect")


@dataclass
class CritiqueConfig(ArtifactConfig):
    """Structure of a critique head; saved as the artifact's config (JSON)."""

    kinds: tuple[str, ...] = _arg("flaw vocabulary learned from the data (without 'none')")
    token_dim: int = _arg("width D of the image encoder's patch tokens")
    text_dim: int = _arg("width of the instruction features from the text encoder")
    grid: tuple[int, int] = _arg("patch grid (rows, cols) of the image encoder")
    image_encoder: dict = _arg("image encoder spec (build_image_encoder)", default_factory=dict)
    text_encoder: dict = _arg("text encoder spec (build_text_encoder)", default_factory=dict)
    hidden: int = _arg("width of the head's per-patch features", default=128)
    n_blocks: int = _arg("residual 3x3 conv blocks mixing neighbouring patches", default=2)
    dropout: float = _arg("dropout inside the blocks (training only)", default=0.1)
    pass_threshold: float = _arg("p_pass at or above which the attempt passes", default=0.5)
    mask_threshold: float = _arg("per-patch P(any flaw) that marks a flaw region", default=0.5)
    max_flaws: int = _arg("at most this many flaws (regions) per critique", default=3)
    mask_margin: float = _arg("mask dilation around a flaw box, fraction of a side", default=0.05)
    attention_combine: str = _arg(
        "how an SRM attention mask joins the flaw mask: union|intersect", default="union"
    )
    encoder_trained: bool = _arg(
        "the image encoder was trained: its weights are in the artifact", default=False
    )
    pixel_diff: bool = _arg(
        "each patch also reads its pooled |attempt - source| pixels (mean per channel, max); "
        "old artifacts: False",
        default=False,
    )
    score_inputs: tuple[str, ...] = _arg(
        "cheap scores of the attempt (e.g. clip_i, clip_t) the pass read-out also reads; a missing one "
        "is masked (the head was trained with them dropped at random), () = images and text only",
        default=(),
    )
    score_mean: tuple[float, ...] = _arg(
        "per score_inputs entry, its training mean (scores are standardised); () = 0", default=()
    )
    score_std: tuple[float, ...] = _arg(
        "per score_inputs entry, its training standard deviation; () = 1", default=()
    )
    refine_threshold: float = _arg(
        "pointing confidence at or above which a failing attempt is refined rather than replaced by a "
        "fresh candidate (should_refine); 0 = always refine, fitted by ade-train refine-rule",
        default=0.0,
    )

    def __post_init__(self) -> None:
        self.kinds = tuple(str(k) for k in self.kinds)
        self.score_inputs = tuple(str(k) for k in self.score_inputs)
        if len(set(self.score_inputs)) != len(self.score_inputs) or not all(self.score_inputs):
            raise InputError(
                f"CritiqueConfig.score_inputs={self.score_inputs!r}: give unique non-empty names"
            )
        n_scores = len(self.score_inputs)
        self.score_mean = tuple(float(v) for v in self.score_mean) or (0.0,) * n_scores
        self.score_std = tuple(float(v) for v in self.score_std) or (1.0,) * n_scores
        if len(self.score_mean) != n_scores or len(self.score_std) != n_scores:
            raise InputError("CritiqueConfig.score_mean/score_std: give one value per score_inputs entry")
        if not all(v > 0 and math.isfinite(v) for v in self.score_std):
            raise InputError(f"CritiqueConfig.score_std={self.score_std!r}: must be positive")
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        kinds = self.kinds
        if not kinds or len(set(kinds)) != len(kinds) or NONE_KIND in kinds or not all(kinds):
            raise InputError(f"CritiqueConfig.kinds={kinds!r}: give unique non-empty kinds, 'none' excluded")
        for name in ("token_dim", "text_dim", "hidden", "max_flaws"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"CritiqueConfig.{name}={getattr(self, name)!r}: must be a positive integer")
        if self.n_blocks < 0:
            raise InputError(f"CritiqueConfig.n_blocks={self.n_blocks!r}: must be >= 0")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise InputError(f"CritiqueConfig.grid={self.grid!r}: must be (rows, cols) with both >= 1")
        for name in ("dropout", "pass_threshold", "mask_threshold", "refine_threshold"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise InputError(f"CritiqueConfig.{name}={value!r}: must lie in [0, 1]")
        if not 0.0 <= self.mask_margin < 0.5:
            raise InputError(f"CritiqueConfig.mask_margin={self.mask_margin!r}: must lie in [0, 0.5)")
        if self.attention_combine not in COMBINE_MODES:
            raise InputError(
                f"CritiqueConfig.attention_combine={self.attention_combine!r}: use one of {COMBINE_MODES}"
            )


PIXEL_DIFF_DIM = 4  # per patch: mean |attempt - source| of R, G, B and the max over the patch
_PIXELS_PER_CELL = 8  # resolution of the pixel difference: 8 x 8 pixels per patch


def patch_pixel_diff(
    source: Image.Image, attempt: Image.Image, grid: tuple[int, int], window: tuple[float, ...] = (0, 0, 1, 1)
) -> np.ndarray:
    """[rows * cols, 4] float32: |attempt - source| in [0, 1] on the encoder's patch grid.

    Both images are cropped to the encoder's view ``window`` (``crop_window``) and resized to
    8 x 8 pixels per patch (area averaging); per patch the mean difference of each channel and the max over all.
    The difference maps the gradient-boosted-trees baseline reads, given to every patch.
    """
    rows, cols = grid
    size = (cols * _PIXELS_PER_CELL, rows * _PIXELS_PER_CELL)

    def view(im: Image.Image) -> np.ndarray:
        w, h = im.size
        box = (window[0] * w, window[1] * h, window[2] * w, window[3] * h)
        return np.asarray(im.convert("RGB").resize(size, Image.BOX, box=box), np.float32) / 255.0

    diff = np.abs(view(attempt) - view(source))  # [H, W, 3]
    cells = diff.reshape(rows, _PIXELS_PER_CELL, cols, _PIXELS_PER_CELL, 3)
    mean = cells.mean(axis=(1, 3)).reshape(rows * cols, 3)
    peak = cells.max(axis=(1, 3, 4)).reshape(rows * cols, 1)
    return np.concatenate([mean, peak], axis=1).astype(np.float32)


class _PatchBlock(nn.Module):
    """Residual depthwise 3x3 conv (neighbouring patches) + per-patch MLP, pre-norm."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, p, c = x.shape
        y = self.norm1(x).transpose(1, 2).reshape(b, c, grid[0], grid[1])
        x = x + self.mix(y).reshape(b, c, p).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class CritiqueHead(nn.Module):
    """Pass logit (attention-pooled) and per-patch flaw logits over ``("none",) + kinds``.

    Input per patch: the attempt token, the source token and their difference (what changed);
    the instruction modulates every patch (FiLM) so the head can tell wanted from unwanted change.
    """

    def __init__(self, config: CritiqueConfig) -> None:
        super().__init__()
        self.config = config
        d, h = config.token_dim, config.hidden
        n_in = 3 * d + 2 + (PIXEL_DIFF_DIM if config.pixel_diff else 0)
        self.token_in = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, h), nn.GELU())
        self.text_film = nn.Linear(config.text_dim, 2 * h)
        self.blocks = nn.ModuleList(_PatchBlock(h, config.dropout) for _ in range(config.n_blocks))
        self.norm = nn.LayerNorm(h)
        self.flaw_out = nn.Linear(h, len(config.kinds) + 1)
        self.pool_score = nn.Linear(h, 1)
        # a linear read-out, heavy dropout on the pooled patch features (not on the change statistics):
        # otherwise the pass logit memorises the training requests (held-out AUROC ~0.5 on the testbed)
        self.pass_drop = nn.Dropout(0.5)
        n_scores = len(config.score_inputs)
        # each cheap score with its "present" flag, mixed non-linearly (absent when score_inputs is empty)
        self.score_in = nn.Sequential(nn.Linear(2 * n_scores, 16), nn.GELU()) if n_scores else None
        n_stats = 4 + (2 * PIXEL_DIFF_DIM if config.pixel_diff else 0)
        # the standardised scores also go straight to the read-out: a logistic on them is one step away
        n_score_feats = 16 + 2 * n_scores if n_scores else 0
        self.pass_out = nn.Linear(3 * h + n_stats + n_score_feats, 1)

    def forward(
        self,
        attempt_tokens: torch.Tensor,
        source_tokens: torch.Tensor,
        text_features: torch.Tensor,
        grid: tuple[int, int] | None = None,
        scores: torch.Tensor | None = None,
        pixel_diff: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pass logits [B], flaw logits [B, P, 1 + K]; class 0 is "none").

        ``scores``: [B, len(config.score_inputs)], NaN where a score is missing (None: all missing).
        ``pixel_diff``: [B, P, 4] from ``patch_pixel_diff``, required when ``config.pixel_diff``.
        """
        grid = tuple(grid or self.config.grid)  # type: ignore[assignment]
        b, p, d = attempt_tokens.shape
        if (
            source_tokens.shape != attempt_tokens.shape
            or p != grid[0] * grid[1]
            or d != self.config.token_dim
        ):
            raise InputError(
                f"critique head: attempt tokens {tuple(attempt_tokens.shape)} and source tokens "
                f"{tuple(source_tokens.shape)} must both be [B, {grid[0] * grid[1]}, {self.config.token_dim}]"
            )
        diff = attempt_tokens - source_tokens
        # how much each patch changed, as explicit scalars: the cue most flaws start from
        change = torch.stack(
            [diff.norm(dim=-1) / d**0.5, F.cosine_similarity(attempt_tokens, source_tokens, dim=-1)], -1
        )
        parts = [attempt_tokens, source_tokens, diff, change]
        if self.config.pixel_diff:
            if pixel_diff is None or pixel_diff.shape != (b, p, PIXEL_DIFF_DIM):
                got = None if pixel_diff is None else tuple(pixel_diff.shape)
                raise InputError(f"critique head: pixel_diff {got} must be [B, {p}, {PIXEL_DIFF_DIM}]")
            pixel_diff = pixel_diff.to(attempt_tokens.dtype)
            parts.append(pixel_diff)
        x = self.token_in(torch.cat(parts, dim=-1))
        gamma, beta = self.text_film(text_features).unsqueeze(1).chunk(2, dim=-1)
        x = x * (1 + gamma) + beta
        for block in self.blocks:
            x = block(x, grid)
        x = self.norm(x)
        weights = torch.softmax(self.pool_score(x).squeeze(-1), dim=1)
        # pooled change statistics go straight to the pass head: how much changed, and the most
        stats = torch.cat([change.mean(1), change.amax(1)], -1)
        if self.config.pixel_diff:
            stats = torch.cat([stats, pixel_diff.mean(1), pixel_diff.amax(1)], -1)
        trunk = torch.cat([(weights.unsqueeze(-1) * x).sum(1), x.mean(1), x.amax(1)], -1)
        pooled = [self.pass_drop(trunk), stats]
        if self.score_in is not None:
            n_scores = len(self.config.score_inputs)
            if scores is None:
                scores = torch.full((b, n_scores), float("nan"), device=x.device, dtype=x.dtype)
            if scores.shape != (b, n_scores):
                raise InputError(f"critique head: scores {tuple(scores.shape)} must be [B, {n_scores}]")
            present = torch.isfinite(scores)
            mean = torch.tensor(self.config.score_mean, device=x.device, dtype=x.dtype)
            std = torch.tensor(self.config.score_std, device=x.device, dtype=x.dtype)
            z = torch.where(present, (scores.to(x.dtype) - mean) / std, torch.zeros_like(mean))
            feats = torch.cat([z, present.to(x.dtype)], -1)
            pooled += [self.score_in(feats), feats]
        return self.pass_out(torch.cat(pooled, dim=-1)).squeeze(-1), self.flaw_out(x)


@dataclass
class Critique:
    """What the critique head says about one attempt.

    ``flaw_map`` is [K, h, w]: per patch, the probability of each flaw kind (``kinds`` order;
    the "none" class is left out, so ``flaw_map.sum(0)`` is the probability of any flaw).
    ``flaws`` are the top regions, most confident first; ``mask`` is H x W in [0, 1] at the
    output image's size (1 = the refinement may change this pixel).
    """

    p_pass: float
    passed: bool
    flaw_map: np.ndarray
    kinds: tuple[str, ...]
    flaws: list[Flaw]
    flaw_scores: list[float]
    feedback: str
    mask: np.ndarray

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """Box of the most confident flaw (normalised x0, y0, x1, y1), None when no flaw was found."""
        return self.flaws[0].box if self.flaws else None

    @property
    def pointing_confidence(self) -> float:
        """How sure the critique is of where the flaw is: the top region's max P(any flaw), 0 without one."""
        return float(self.flaw_scores[0]) if self.flaw_scores else 0.0


def should_refine(critique: Critique, threshold: float) -> bool:
    """After a failing attempt: refine it with the critique's feedback (True) or sample a fresh
    candidate (False). Refinement pays off when the critique knows where the flaw is, so the rule
    is ``critique.pointing_confidence >= threshold``; threshold 0 always refines."""
    return critique.pointing_confidence >= float(threshold)


def _check_attention_mask(mask: Any, height: int, width: int) -> np.ndarray:
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise InputError(f"attention_mask must be a finite 2-D array (H x W), got shape {arr.shape}")
    if arr.shape != (height, width):  # e.g. an SRM mask at latent resolution
        arr = F.interpolate(torch.from_numpy(arr)[None, None], size=(height, width), mode="bilinear")[
            0, 0
        ].numpy()
    return np.clip(arr, 0.0, 1.0)


def _check_image(image: Any, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError(f"{name} must be a PIL image, got {type(image).__name__}; open it with PIL first")
    return image.convert("RGB")


class CritiquePredictor:
    """Critique head + the encoders it was trained with; what the adaptive loop calls."""

    def __init__(self, head: CritiqueHead, image_encoder: Any, text_encoder: Any) -> None:
        self.head = head.eval()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        cfg = head.config
        if getattr(text_encoder, "dim", cfg.text_dim) != cfg.text_dim:
            raise InputError(
                f"text encoder gives {text_encoder.dim}-d features, the head expects {cfg.text_dim}"
            )

    @property
    def config(self) -> CritiqueConfig:
        return self.head.config

    def should_refine(self, critique: Critique) -> bool:
        """``should_refine(critique, config.refine_threshold)``: refine, or start a fresh candidate."""
        return should_refine(critique, self.config.refine_threshold)

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CritiquePredictor:
        """Run the head on ``device`` (the encoders keep the device of their own spec); returns self."""
        self.head.to(device=device, dtype=dtype)
        return self

    def predict(
        self,
        source: Image.Image,
        output: Image.Image,
        instruction: str,
        attention_mask: Any = None,
        scores: Mapping[str, float] | None = None,
    ) -> Critique:
        """Critique one attempt; ``attention_mask`` (H x W in [0, 1], e.g. SRM) joins the region mask.

        ``scores``: the attempt's cheap scores (e.g. ``attempt.scores``); the head reads those named by
        ``config.score_inputs`` and treats the missing ones as absent.
        """
        return self.predict_batch([source], [output], [instruction], [attention_mask], [scores])[0]

    def _score_tensor(self, scores: Sequence[Mapping[str, float] | None] | None, n: int) -> torch.Tensor:
        names = self.config.score_inputs
        rows = list(scores) if scores is not None else [None] * n
        if len(rows) != n:
            raise InputError("predict_batch: give one scores mapping (or None) per attempt")
        out = torch.full((n, len(names)), float("nan"))
        for i, row in enumerate(rows):
            if row is None:
                continue
            if not isinstance(row, Mapping):
                raise InputError(
                    f"scores[{i}] must be a mapping of score name to value, got {type(row).__name__}"
                )
            for j, name in enumerate(names):
                value = row.get(name)
                if value is not None and math.isfinite(float(value)):
                    out[i, j] = float(value)
        return out

    @torch.no_grad()
    def predict_batch(
        self,
        sources: Sequence[Image.Image],
        outputs: Sequence[Image.Image],
        instructions: Sequence[str],
        attention_masks: Sequence[Any] | None = None,
        scores: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[Critique]:
        n = len(outputs)
        attention_masks = list(attention_masks) if attention_masks is not None else [None] * n
        if not (len(sources) == n == len(instructions) == len(attention_masks)):
            raise InputError("predict_batch: give one source, output, instruction (and mask) per attempt")
        if n == 0:
            return []
        srcs = [_check_image(im, f"sources[{i}]") for i, im in enumerate(sources)]
        outs = [_check_image(im, f"outputs[{i}]") for i, im in enumerate(outputs)]
        for i, text in enumerate(instructions):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"instructions[{i}] must be a non-empty string")
        ref = next(self.head.parameters())
        tokens = self.image_encoder.encode_patches(srcs + outs).to(device=ref.device, dtype=ref.dtype)
        text = self.text_encoder.encode(list(instructions)).to(device=ref.device, dtype=ref.dtype)
        score_t = self._score_tensor(scores, n).to(device=ref.device, dtype=ref.dtype)
        pixel_diff = None
        if self.config.pixel_diff:
            grid = tuple(self.config.grid)
            pixel_diff = torch.from_numpy(
                np.stack(
                    [
                        patch_pixel_diff(s, o, grid, crop_window(self.image_encoder, *o.size))
                        for s, o in zip(srcs, outs, strict=True)
                    ]
                )
            ).to(device=ref.device, dtype=ref.dtype)
        pass_logit, flaw_logits = self.head(
            tokens[n:], tokens[:n], text, scores=score_t, pixel_diff=pixel_diff
        )
        p_pass = torch.sigmoid(pass_logit.float()).cpu().numpy()
        probs = torch.softmax(flaw_logits.float(), dim=-1)[..., 1:].cpu().numpy()  # drop "none"
        return [
            self._critique(float(p_pass[i]), probs[i], outs[i], instructions[i], attention_masks[i])
            for i in range(n)
        ]

    def _critique(
        self, p_pass: float, probs: np.ndarray, output: Image.Image, instruction: str, attention: Any
    ) -> Critique:
        from ade_runtime.feedback import feedback_prompt

        cfg = self.config
        rows, cols = cfg.grid
        flaw_map = probs.T.reshape(len(cfg.kinds), rows, cols)
        passed = p_pass >= cfg.pass_threshold
        found = flaw_regions(flaw_map, cfg.kinds, cfg.mask_threshold, cfg.max_flaws, force=not passed)
        width, height = output.size
        window = crop_window(self.image_encoder, width, height)
        flaws = [Flaw(kind=f.kind, box=from_view(f.box, window)) for f, _ in found]
        # no flaw found: the mask does not confine anything
        mask = (
            region_mask(flaws, height, width, cfg.mask_margin)
            if flaws
            else np.ones((height, width), np.float32)
        )
        if attention is not None:
            att = _check_attention_mask(attention, height, width)
            if not flaws:
                mask = att
            elif cfg.attention_combine == "union":
                mask = np.maximum(mask, att)
            elif (mask * att).max() > 0:  # intersect, unless the two masks are disjoint
                mask = mask * att
        return Critique(
            p_pass=p_pass,
            passed=passed,
            flaw_map=flaw_map,
            kinds=cfg.kinds,
            flaws=flaws,
            flaw_scores=[s for _, s in found],
            feedback=feedback_prompt(instruction, flaws) if flaws else instruction,
            mask=mask.astype(np.float32),
        )

    # ---- artifact ----------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the artifact stores: ``head.*`` always, ``image_encoder.*`` when trained."""
        out = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if self.config.encoder_trained:
            module = _encoder_module(self.image_encoder)
            out.update(
                {f"image_encoder.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            )
        return out

    def save_pretrained(
        self, directory: str | Path, *, metrics: dict | None = None, data_fingerprint: str | None = None
    ) -> Path:
        """Write ``critique.safetensors`` + ``critique.json`` into ``directory`` (atomic, merges)."""
        from ade_runtime.artifacts import CRITIQUE_NAME, encoder_entry, save_artifact

        # a frozen checkpoint is referenced by spec + fingerprint; trained weights travel in the artifact
        image = {"spec": self.image_encoder.spec(), "trained": True}
        if not self.config.encoder_trained:
            image = encoder_entry(self.image_encoder)
        feature_spec = {"encoders": {"image": image, "text": encoder_entry(self.text_encoder)}}
        return save_artifact(
            directory,
            CRITIQUE_NAME,
            kind=CRITIQUE_KIND,
            class_name=type(self).__name__,
            config=self.config.to_dict(),
            tensors=self.state_tensors(),
            feature_spec=feature_spec,
            data_fingerprint=data_fingerprint,
            metrics=metrics,
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CritiquePredictor:
        """Load a critique exported by ``save_pretrained`` / ``ade-train critique``.

        The encoders are rebuilt from their specs; a frozen image encoder whose fingerprint
        differs from the one recorded at training time is refused (ArtifactError).
        """
        from ade_runtime.artifacts import CRITIQUE_NAME, load_artifact
        from ade_runtime.encoders import build_image_encoder, build_text_encoder

        probe = load_artifact(directory, CRITIQUE_NAME, kind=CRITIQUE_KIND)
        where = str(probe.path)
        encoders = (probe.feature_spec or {}).get("encoders") or {}
        if not all(isinstance(encoders.get(r), dict) and "spec" in encoders[r] for r in ("image", "text")):
            raise ArtifactError(
                f"{where}: feature_spec.encoders lacks 'image'/'text' specs; re-export the critique"
            )
        config = CritiqueConfig.from_dict(probe.config, where)
        image_encoder = build_image_encoder(encoders["image"]["spec"])
        text_encoder = build_text_encoder(encoders["text"]["spec"])
        fingerprints = {"text": text_encoder.fingerprint}
        if not config.encoder_trained:
            fingerprints["image"] = image_encoder.fingerprint
        art = load_artifact(directory, CRITIQUE_NAME, kind=CRITIQUE_KIND, encoder_fingerprints=fingerprints)
        head = CritiqueHead(config)
        _load_prefixed(head, art.tensors, "head.", where)
        if config.encoder_trained:
            _load_prefixed(_encoder_module(image_encoder), art.tensors, "image_encoder.", where)
        return cls(head, image_encoder, text_encoder)


def _encoder_module(image_encoder: Any) -> nn.Module:
    if not isinstance(module := getattr(image_encoder, "model", None), nn.Module):
        raise InputError(
            f"{type(image_encoder).__name__} has no torch module (.model) to save or load weights"
        )
    return module


def _load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ArtifactError(
            f"{where}: tensors under '{prefix}' do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); the artifact and its config disagree, re-export it"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # shapes differ from the config's
        raise ArtifactError(f"{where}: tensors under '{prefix}' have wrong shapes: {exc}") from exc
