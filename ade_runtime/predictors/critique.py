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
from ade_runtime.predictors.critique_head import (  # noqa: F401  (re-exported: the structure lives there)
    COMBINE_MODES,
    NONE_KIND,
    PIXEL_DIFF_DIM,
    CritiqueConfig,
    CritiqueHead,
    patch_pixel_diff,
)
from ade_runtime.predictors.regions import (  # noqa: F401  (re-exported: the head's public helpers)
    crop_window,
    flaw_regions,
    from_view,
    region_mask,
    to_view,
)
from ade_runtime.traces.records import Flaw


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
