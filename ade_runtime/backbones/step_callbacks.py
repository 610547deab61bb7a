"""Per-step work inside a diffusers pipeline: the scheduler-step capture, the x0 preview, and ADE's
mask / preview / prune callbacks passed as ``callback_on_step_end``.

Everything here attaches to a frozen pipeline from the outside, the way diffusers'
``hooks/first_block_cache.py`` does, so no upstream pipeline is forked. The x0 preview follows the
flow-matching identity ``x0 = x_t - sigma_t * v`` users compute by hand (diffusers #10606, mflux #726).
"""

from __future__ import annotations

from typing import Any


def flow_x0(x_t, v, sigma_t: float):
    """Flow-matching x0 estimate ``x0 = x_t - sigma_t * v``, in float32.

    ``v`` is the velocity the scheduler stepped with (the transformer's output, combined for CFG
    exactly as the pipeline combined it), captured by ``SchedulerStepCapture``. Recovering ``v``
    from two consecutive latents instead divides a bf16 rounding error by the small step
    ``sigma_next - sigma_t`` (the scheduler casts each step back to the model dtype).
    """
    return x_t.float() - float(sigma_t) * v.float()


class SchedulerStepCapture:
    """Context manager: records the inputs of every ``scheduler.step`` call of one pipeline run.

    ``sample`` is x_t and ``model_output`` the velocity of the last step, both as the pipeline passed
    them (no copy); ``noise`` is the sample of step 0 (pure noise for a flow-matching pipeline);
    ``sigmas`` the schedule, read once per run on its first step, as Python floats. The wrapper is
    an instance attribute shadowing the scheduler's method, removed on exit.
    """

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.sample = None
        self.model_output = None
        self.noise = None
        self.sigmas: list[float] | None = None
        self.steps = 0
        self._previous: Any = None

    def _step(self, model_output, timestep, sample, *args, **kwargs):
        if self.steps == 0:
            self.noise = sample
            self.sigmas = scheduler_sigmas(self.scheduler)
        self.sample, self.model_output = sample, model_output
        self.steps += 1
        return self._original(model_output, timestep, sample, *args, **kwargs)

    def __enter__(self) -> SchedulerStepCapture:
        self._previous = vars(self.scheduler).get("step")
        self._original = self.scheduler.step
        self.scheduler.step = self._step
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            self.scheduler.step = self._previous
        else:
            vars(self.scheduler).pop("step", None)


def scheduler_sigmas(scheduler: Any) -> list[float] | None:
    """The flow-matching sigma schedule (length steps + 1) if the scheduler has one, else None."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        return None
    return [float(s) for s in sigmas]


def stop_pipeline(pipeline: Any) -> None:
    """Skip the remaining denoising steps of ``pipeline``'s current call."""
    # diffusers has no public setter: its loops read the read-only ``interrupt`` property backed by
    # ``_interrupt``, the flag its docs set from a callback ("Interrupt the diffusion process")
    pipeline._interrupt = True


# One callback per behaviour, shaped like diffusers' ``PipelineCallback`` (``tensor_inputs`` +
# ``callback_fn(pipeline, step_index, timestep, callback_kwargs) -> callback_kwargs``); not subclasses,
# so the runtime imports without diffusers. ``StepCallbacks`` runs them in order.


class MaskCallback:
    """Mask confinement (``token_mask`` [1, N, 1] over packed tokens, ``source_latents`` packed):
    outside the mask the latents follow the source's own flow path ``(1 - s) * source + s * noise``
    at the current noise level. The blend runs in float32 and is cast back to the latents' dtype, so
    a float32 VAE under a bf16 transformer keeps the pipeline's dtype."""

    tensor_inputs = ["latents"]

    def __init__(self, capture: SchedulerStepCapture, token_mask: Any, source_latents: Any):
        self.capture = capture
        self.token_mask = token_mask.float()
        self.source_latents = source_latents.float()

    def confine(self, x, sigma: float):
        """x inside the mask; outside it, the source's latents at noise level ``sigma`` (float32)."""
        m = self.token_mask.to(x.device)
        target = (1.0 - sigma) * self.source_latents.to(x.device) + sigma * self.capture.noise.float()
        return m * x.float() + (1.0 - m) * target

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        latents = callback_kwargs["latents"]
        sigma = self.capture.sigmas[step_index + 1]
        callback_kwargs["latents"] = self.confine(latents, sigma).to(latents.dtype)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class PreviewCallback:
    """The preview after ``preview_step`` steps: x0 from the captured velocity (``flow_x0``), confined
    like the latents when there is a ``mask``, decoded by ``decode(pipeline, x0) -> PIL`` into ``image``."""

    tensor_inputs: list[str] = []  # reads the scheduler step's inputs from the capture

    def __init__(
        self, capture: SchedulerStepCapture, preview_step: int, decode: Any, mask: MaskCallback | None = None
    ):
        self.capture = capture
        self.preview_step = preview_step
        self.decode = decode
        self.mask = mask
        self.image = None

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        if step_index + 1 == self.preview_step:
            cap = self.capture
            x0 = flow_x0(cap.sample, cap.model_output, cap.sigmas[step_index])
            if self.mask is not None:
                x0 = self.mask.confine(x0, 0.0)
            self.image = self.decode(pipeline, x0)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class PruneCallback:
    """At the preview step, ``preview_fn(preview image, step)``; False prunes the attempt: the pipeline
    stops (``stop_pipeline``), so the remaining steps are skipped."""

    tensor_inputs: list[str] = []

    def __init__(self, preview: PreviewCallback, preview_fn: Any):
        self.preview = preview
        self.preview_fn = preview_fn
        self.pruned = False

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        step = self.preview.preview_step
        if step_index + 1 == step and not self.preview_fn(self.preview.image, step):
            self.pruned = True
            stop_pipeline(pipeline)
        return callback_kwargs

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class StepCallbacks:
    """ADE's callbacks of one pipeline call, passed as ``callback_on_step_end``: mask, then preview,
    then prune, each given the previous one's ``callback_kwargs``, as diffusers'
    ``MultiPipelineCallbacks`` runs its list; ``preview_image`` and ``pruned`` read the outcome back."""

    def __init__(
        self,
        mask: MaskCallback | None = None,
        preview: PreviewCallback | None = None,
        prune: PruneCallback | None = None,
    ):
        self.mask, self.preview, self.prune = mask, preview, prune
        self.callbacks = [c for c in (mask, preview, prune) if c is not None]

    @classmethod
    def for_attempt(
        cls,
        capture: SchedulerStepCapture,
        *,
        preview_step: int | None = None,
        preview_fn: Any = None,
        decode: Any = None,
        token_mask: Any = None,
        source_latents: Any = None,
    ) -> StepCallbacks:
        """The callbacks one attempt needs: the mask with a ``token_mask``, preview and prune with a
        ``preview_fn``."""
        mask = None if token_mask is None else MaskCallback(capture, token_mask, source_latents)
        if preview_fn is None:
            return cls(mask)
        preview = PreviewCallback(capture, preview_step, decode, mask)
        return cls(mask, preview, PruneCallback(preview, preview_fn))

    @property
    def tensor_inputs(self) -> list[str]:
        return list(dict.fromkeys(name for c in self.callbacks for name in c.tensor_inputs))

    @property
    def preview_image(self) -> Any:
        return None if self.preview is None else self.preview.image

    @property
    def pruned(self) -> bool:
        return self.prune is not None and self.prune.pruned

    def __call__(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        for callback in self.callbacks:
            callback_kwargs = callback(pipeline, step_index, timestep, callback_kwargs)
        return callback_kwargs


def has_flow_sigmas(scheduler: Any) -> bool:
    """True for flow-matching schedulers, whose sigmas allow the x0 preview."""
    return (
        "FlowMatch" in type(scheduler).__name__
        or hasattr(scheduler, "sigmas")
        and hasattr(scheduler.config, "shift")
    )
