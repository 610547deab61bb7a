"""Spatial reasoning mask (SRM): where in the image does FLUX attend to the instruction?

An attention processor for diffusers' ``FluxAttention`` (``models/transformers/transformer_flux.py``,
``FluxAttnProcessor``) is installed with ``transformer.set_attn_processor`` on chosen blocks only
and the originals are restored afterwards. At chosen denoising steps it recomputes the block's
queries and keys (projection, RMS norm, RoPE exactly as upstream), and measures, for every output
image token, the softmax attention mass that falls on the instruction's real text tokens
(padding and, by default, the EOS token masked out), averaged over heads. Queries are processed
in chunks so the full L x L attention matrix is never materialised (pytorch #98505,
attention-map-diffusers #15/#23); the block's real output still comes from the original processor.

FLUX.1 Kontext's joint sequence is ``[text tokens | output image tokens | conditioning image
tokens]``; the captured queries are the output image tokens. The per-token scores are turned into
a pixel mask by ``token_map_to_mask``: Gaussian smoothing on the token grid, bilinear upsampling
to pixels, then a threshold at a quantile or by Otsu's method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ade_runtime.errors import InputError


@dataclass
class SRMConfig:
    """Which attention to capture and how to turn it into a mask."""

    blocks: tuple[str, ...] = ("transformer_blocks",)  # prefixes of attention module names to capture
    steps: tuple[int, ...] = (0, 1)  # 0-based denoising steps to capture at (early steps carry layout)
    threshold: str | float = "otsu"  # "otsu", or a quantile q in (0, 1): keep scores >= the q-quantile
    smoothing: float = 1.0  # Gaussian sigma in token units before upsampling (0 = none)
    chunk_size: int = 256  # image queries per chunk; temporaries ~ 2 x heads x chunk_size x seq_len floats
    exclude_eos: bool = True  # drop the T5 EOS token, an attention sink, from the instruction's tokens

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        self.steps = tuple(int(s) for s in self.steps)
        if not self.blocks or not all(isinstance(b, str) and b for b in self.blocks):
            raise InputError(f"SRMConfig.blocks must be non-empty module-name prefixes, got {self.blocks!r}")
        if not self.steps or min(self.steps) < 0:
            raise InputError(f"SRMConfig.steps must be non-empty 0-based step indices, got {self.steps!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise InputError(
                    f"SRMConfig.threshold must be 'otsu' or a quantile in (0, 1), got {self.threshold!r}"
                )
        elif not (0.0 < float(self.threshold) < 1.0):
            raise InputError(f"SRMConfig.threshold quantile must lie in (0, 1), got {self.threshold!r}")
        if not (math.isfinite(self.smoothing) and self.smoothing >= 0):
            raise InputError(f"SRMConfig.smoothing must be a finite sigma >= 0, got {self.smoothing!r}")
        if int(self.chunk_size) < 1:
            raise InputError(f"SRMConfig.chunk_size must be >= 1, got {self.chunk_size!r}")


def attention_to_text(
    query: torch.Tensor, key: torch.Tensor, text_index: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Softmax attention mass from each query onto the keys in ``text_index``, mean over heads.

    ``query`` [B, Nq, H, D], ``key`` [B, L, H, D], ``text_index`` LongTensor of key positions.
    Returns [B, Nq] float32. Only ``chunk_size`` queries' logits exist at a time.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    k = key.transpose(1, 2).float()  # B, H, L, D
    out = []
    for start in range(0, query.shape[1], chunk_size):
        q = query[:, start : start + chunk_size].transpose(1, 2).float()  # B, H, c, D
        probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # B, H, c, L
        out.append(probs.index_select(-1, text_index).sum(-1).mean(1))  # B, c
    return torch.cat(out, dim=1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a 1-D sample."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centers)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Every cut inside an empty gap is optimal; take the middle of that plateau, not its first edge.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run = best[: int(np.argmax(np.diff(np.append(best, -2)) != 1)) + 1]  # first contiguous plateau
    return float(edges[int(run[len(run) // 2]) + 1])


def _gaussian_blur(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    g = grid[None, None]
    g = F.conv2d(F.pad(g, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    g = F.conv2d(F.pad(g, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return g[0, 0]


def token_map_to_mask(
    scores: torch.Tensor | np.ndarray, grid: tuple[int, int], size: tuple[int, int], config: SRMConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Token scores (gh * gw, row-major) -> (binary mask, soft map), both float32 H x W at ``size`` (W, H)."""
    gh, gw = grid
    t = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(gh, gw)
    if config.smoothing > 0:
        t = _gaussian_blur(t, config.smoothing)
    w, h = size
    up = F.interpolate(t[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    soft = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    cut = (
        otsu_threshold(soft)
        if config.threshold == "otsu"
        else float(np.quantile(soft, float(config.threshold)))
    )
    mask = (soft >= cut).astype(np.float32) if hi > lo else np.ones_like(soft)
    return mask, soft.astype(np.float32)


def _query_key(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """Queries and keys of a ``FluxAttention`` as upstream projects them, without the values
    (which SRM never uses); a fused QKV projection computes V anyway and it is dropped."""
    eq = ek = None
    with_text = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
    if getattr(attn, "fused_projections", False):
        q, k, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        if with_text and hasattr(attn, "to_added_qkv"):
            eq, ek, _ = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return q, k, eq, ek
    q, k = attn.to_q(hidden_states), attn.to_k(hidden_states)
    if with_text:
        eq, ek = attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states)
    return q, k, eq, ek


class _SRMProcessor:
    """Delegates to the original processor; at capture steps also records image->text attention."""

    def __init__(self, original: Any, capture: SRMCapture, name: str):
        self.original = original
        self.capture = capture
        self.name = name

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        if self.capture.active:
            self.capture._record(self._scores(attn, hidden_states, encoder_hidden_states, image_rotary_emb))
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    @torch.no_grad()
    def _scores(self, attn, hidden_states, encoder_hidden_states, image_rotary_emb) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        q, k, eq, ek = _query_key(attn, hidden_states, encoder_hidden_states)
        q = attn.norm_q(q.unflatten(-1, (-1, attn.head_dim)))
        k = attn.norm_k(k.unflatten(-1, (-1, attn.head_dim)))
        if eq is not None:
            q = torch.cat([attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim))), q], dim=1)
            k = torch.cat([attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim))), k], dim=1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        t0 = self.capture.text_len
        queries = q[:, t0 : t0 + self.capture.query_tokens]
        return attention_to_text(
            queries, k, self.capture.text_index.to(k.device), self.capture.config.chunk_size
        )


class SRMCapture:
    """Context manager: install SRM processors on the chosen blocks of a FluxTransformer2DModel.

    ``text_tokens`` is the number of real (non-padding) instruction tokens, EOS included;
    ``query_tokens`` the number of output image tokens; ``calls_per_step`` 2 under true CFG
    (only the first, conditional, call of a step is captured).
    """

    def __init__(
        self,
        transformer: Any,
        config: SRMConfig,
        *,
        text_tokens: int,
        query_tokens: int,
        calls_per_step: int = 1,
    ):
        self.transformer = transformer
        self.config = config
        n = int(text_tokens) - (1 if config.exclude_eos and text_tokens > 1 else 0)
        self.text_index = torch.arange(max(n, 1))
        self.query_tokens = int(query_tokens)
        self.calls_per_step = int(calls_per_step)
        self.text_len = 0
        self.calls = 0
        self.active = False
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._originals: dict[str, Any] | None = None
        self._hook = None

    def _select(self, names: list[str]) -> list[str]:
        chosen = [n for n in names if any(n == b or n.startswith(b + ".") for b in self.config.blocks)]
        if not chosen:
            blocks = sorted({n.rsplit(".", 2)[0] for n in names})
            raise InputError(
                f"SRMConfig.blocks {self.config.blocks!r} match no attention module of the transformer; "
                f"choose prefixes of: {blocks[:8]}{' ...' if len(blocks) > 8 else ''}"
            )
        return chosen

    def _pre_hook(self, module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states")
        self.text_len = int(ehs.shape[1]) if ehs is not None else 0
        step, pos = divmod(self.calls, self.calls_per_step)
        self.active = pos == 0 and step in self.config.steps
        self.calls += 1

    def _record(self, scores: torch.Tensor) -> None:
        # Summed on the scores' device: no device-to-host copy (and sync) per captured block and step.
        s = scores.detach().float()
        self._sum = s if self._sum is None else self._sum + s
        self._count += 1

    def __enter__(self) -> SRMCapture:
        originals = dict(self.transformer.attn_processors)
        chosen = self._select(list(originals))
        new = dict(originals)
        for name in chosen:
            new[name] = _SRMProcessor(originals[name], self, name)
        self.transformer.set_attn_processor(new)
        self._originals = originals
        self._hook = self.transformer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._originals is not None:
            self.transformer.set_attn_processor(dict(self._originals))
            self._originals = None
        self.active = False

    @property
    def captured(self) -> int:
        """How many (block, step) attention maps were accumulated."""
        return self._count

    def token_scores(self) -> torch.Tensor | None:
        """Mean image->text attention per output token, [B, query_tokens]; None if nothing was captured."""
        return None if self._sum is None else (self._sum / self._count).cpu()
