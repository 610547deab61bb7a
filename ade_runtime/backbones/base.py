"""The one protocol every editing backbone adapter implements.

An adapter wraps a frozen editing model (FLUX.1 Kontext, Step1X-Edit, BAGEL, the
synthetic testbed, ...) so that ADE's loop can: encode a request once
(``prepare``), run one attempt from a source or a previous round's output
(``run``), optionally preview a candidate early and prune it, and optionally
confine a refinement round to a mask. Adapters never change model weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

# Called at an early denoising step with a preview image (one-step x0 estimate) and the
# step index; return False to prune the candidate (the adapter interrupts the sampler).
PreviewFn = Callable[[Image.Image, int], bool]


@dataclass
class EditRequest:
    """One user request: the source image and the instruction."""

    image: Image.Image
    instruction: str
    id: str = "request"
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttemptSpec:
    """What to run for one attempt.

    ``input_image`` is the source for round 0 and the previous round's output for a
    refinement round (None means: the request's source). ``mask`` (H x W floats in
    [0, 1], 1 = may change) confines the edit; outside it the input is kept.
    """

    candidate: int
    round: int
    reasoning_tokens: int
    prompt: str
    seed: int
    input_image: Image.Image | None = None
    mask: np.ndarray | None = None
    preview_step: int | None = None
    preview_fn: PreviewFn | None = None


@dataclass
class AttemptOutput:
    """What one attempt produced and cost.

    ``image`` is None when the attempt was pruned at its preview. ``nfe`` counts the
    backbone function evaluations actually spent (fewer when pruned or interrupted).
    ``attention_mask`` is the spatial reasoning mask (H x W in [0, 1]) when the adapter
    captured one. ``latency_s`` is measured wall time, or modelled time for the testbed.
    """

    image: Image.Image | None
    nfe: int
    latency_s: float
    pruned: bool = False
    preview_image: Image.Image | None = None
    attention_mask: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backbone(Protocol):
    """A frozen editing model behind ADE's loop."""

    name: str  # the trace's ``backbone`` field, e.g. "flux-kontext"
    supports_preview: bool  # can run a one-step x0 preview and be interrupted after it
    supports_mask: bool  # can confine an attempt to a mask
    supports_reasoning: bool  # uses ``reasoning_tokens`` (BAGEL thinking mode)

    def prepare(self, request: EditRequest) -> Any:
        """Encode once per request (prompt embeddings, image latents); returns opaque state."""
        ...

    def run(self, state: Any, spec: AttemptSpec) -> AttemptOutput:
        """Run one attempt, reusing ``state`` from ``prepare`` for the same request."""
        ...
