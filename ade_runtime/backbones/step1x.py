"""Step1X-Edit behind ADE's Backbone protocol.

Two upstream routes, tried in this order:

1. ``diffusers.Step1XEditPipeline`` when the installed diffusers ships it (it lives in the open
   pull request diffusers #12249 / a diffusers fork): wrapped by ``DiffusersEditBackbone``, so it
   gets interrupt-based pruning wherever that pipeline supports it.
2. The original repository's ``ImageGenerator`` (stepfun-ai/Step1X-Edit ``inference.py``), importable
   when the repository is on ``PYTHONPATH``: one ``generate_image`` call per attempt, no preview
   and no mask (the sampler has no step callback).

Neither present -> ``BackboneUnavailableError`` naming both installs. On 24 GB cards use the
repository route with ``quantized=True`` (FP8 DiT weights) and ``offload=True`` (Step1X-Edit #8,
#17); expect ~50 s per 1024px image on an A800 at 28 steps.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import time
from typing import Any

from PIL import Image

from ade_runtime.backbones.base import AttemptOutput, AttemptSpec, EditRequest
from ade_runtime.errors import BackboneUnavailableError, InputError

INSTALL_HINT = (
    "Step1X-Edit needs either a diffusers build with Step1XEditPipeline "
    "(pip install 'git+https://github.com/huggingface/diffusers@refs/pull/12249/head') "
    "or the original repository on PYTHONPATH "
    "(git clone https://github.com/stepfun-ai/Step1X-Edit && export PYTHONPATH=$PWD/Step1X-Edit && "
    "pip install einops liger_kernel qwen_vl_utils && pip install flash-attn --no-build-isolation; "
    "not 'pip install -r Step1X-Edit/requirements.txt' into ADE's venv: it pins diffusers==0.32.2, which "
    "has no FluxKontextPipeline, and transformers==4.49.0; see docs/backbones.md)"
)
FLASH_ATTN_HINT = (
    "Step1X-Edit's modules/conditioner.py loads Qwen2.5-VL with attn_implementation='flash_attention_2', "
    "so the repository route needs flash-attn: pip install flash-attn --no-build-isolation "
    "(a CUDA build matching your torch)"
)
MODES = ("flash", "torch")  # the DiT attention of newer ImageGenerator releases (``mode=``)


# The repository route's DiT checkpoint per release (its inference script's ``--version``).
CHECKPOINTS = {"v1.0": "step1x-edit-i1258.safetensors", "v1.1": "step1x-edit-v1p1-official.safetensors"}
DIFFUSERS_MODEL = "stepfun-ai/Step1X-Edit-v1p1-diffusers"  # a diffusers layout (model_index.json)
REPO_ONLY_KWARGS = ("num_steps", "cfg_guidance", "size_level", "negative_prompt")


def has_diffusers_layout(model_path: str) -> bool:
    """True when ``model_path`` (a directory or a Hub id) holds a diffusers ``model_index.json``.

    The default Hub id ``stepfun-ai/Step1X-Edit`` holds the repository-route checkpoint, not a
    diffusers layout, so the diffusers route must not be taken for it.
    """
    if os.path.isdir(model_path):
        return os.path.isfile(os.path.join(model_path, "model_index.json"))
    try:
        from huggingface_hub import file_exists

        return bool(file_exists(model_path, "model_index.json"))
    except Exception:  # offline, unknown id, no huggingface_hub: not provably a diffusers layout
        return False


def _optional_class(module: str, name: str) -> Any | None:
    """``module.name``, or None when the module is not importable or has no such name."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(found, name, None)


def _accepts(fn: Any) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters
    return set(params), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def conditioner_needs_flash_attn() -> bool:
    """True when the repository's ``modules/conditioner.py`` hard-codes flash-attn 2 and it is missing."""
    spec = importlib.util.find_spec("modules.conditioner") if importlib.util.find_spec("modules") else None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return False
    with open(spec.origin, encoding="utf-8") as f:
        hard_coded = "flash_attention_2" in f.read()
    return hard_coded and importlib.util.find_spec("flash_attn") is None


def generator_arguments(
    generator_cls: Any, *, version: str, mode: str | None, torch_dtype: Any, **base: Any
) -> dict[str, Any]:
    """``ImageGenerator``'s keyword arguments: ``base`` plus ``dtype``, ``version`` and ``mode`` where the
    installed class takes them (older releases have none of the three)."""
    from ade_runtime.backbones._diffusers import to_torch_dtype

    if mode is not None and mode not in MODES:
        raise InputError(f"Step1XEditBackbone: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if conditioner_needs_flash_attn():
        raise BackboneUnavailableError(FLASH_ATTN_HINT)
    names, var_kw = _accepts(generator_cls)
    out = dict(base)
    if "dtype" in names or var_kw:
        out["dtype"] = to_torch_dtype(torch_dtype)
    elif torch_dtype not in (None, "bfloat16"):
        raise InputError(
            f"Step1XEditBackbone: the installed ImageGenerator takes no dtype=, so --dtype {torch_dtype} "
            "cannot be honoured; drop --dtype (upstream runs bfloat16) or update the repository"
        )
    if "version" in names or var_kw:
        out["version"] = version
    elif version != "v1.0":
        raise InputError(
            f"Step1XEditBackbone: version={version!r} needs an ImageGenerator that takes version= (the "
            "v1.1 release of stepfun-ai/Step1X-Edit); update the repository (git pull) or use version='v1.0'"
        )
    if "mode" in names or var_kw:
        out["mode"] = mode or ("flash" if importlib.util.find_spec("flash_attn") else "torch")
    elif mode is not None:
        raise InputError("Step1XEditBackbone: the installed ImageGenerator takes no mode=; drop mode")
    return out


class Step1XEditBackbone:
    """Step1X-Edit through the repository's ``ImageGenerator`` (see ``from_pretrained`` for both routes)."""

    name = "step1x-edit"
    supports_preview = False
    supports_mask = False
    supports_reasoning = False

    def __init__(
        self,
        generator: Any,
        *,
        num_steps: int = 28,
        cfg_guidance: float = 6.0,
        size_level: int = 1024,
        negative_prompt: str = "",
    ):
        if not callable(getattr(generator, "generate_image", None)):
            raise InputError(
                "Step1XEditBackbone: generator must be Step1X-Edit's ImageGenerator (has generate_image)"
            )
        if num_steps < 1 or size_level < 16:
            raise InputError(
                f"Step1XEditBackbone: num_steps >= 1 and size_level >= 16, got {num_steps}, {size_level}"
            )
        self.generator = generator
        self.num_steps = int(num_steps)
        self.cfg_guidance = float(cfg_guidance)
        self.size_level = int(size_level)
        self.negative_prompt = negative_prompt
        self.version = "v1.0"  # the checkpoint release; from_pretrained sets the one it loaded

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        *,
        qwen2vl_model_path: str | None = None,
        device: str = "cuda",
        quantized: bool = False,
        offload: bool = False,
        route: str = "auto",
        version: str = "v1.0",
        torch_dtype: Any = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Build the best available route: a diffusers pipeline adapter or the repository adapter.

        ``route`` is ``"auto"``, ``"diffusers"`` or ``"repo"``. The diffusers route is taken only when
        diffusers ships ``Step1XEditPipeline`` and ``model_path`` has a ``model_index.json`` (e.g.
        ``stepfun-ai/Step1X-Edit-v1p1-diffusers``); its keyword arguments are
        ``DiffusersEditBackbone``'s. The repository route reads ``vae.safetensors`` and the DiT
        checkpoint of ``version`` (``v1.0``: ``step1x-edit-i1258``, ``v1.1``:
        ``step1x-edit-v1p1-official``) from ``model_path``; its keyword arguments are this class's.
        There ``torch_dtype`` is ImageGenerator's ``dtype`` (the Qwen2.5-VL encoder's; upstream itself
        keeps the DiT in bf16, or fp8 with ``quantized``, and the VAE in fp32), and ``version`` and
        ``mode`` (``"flash"`` / ``"torch"`` DiT attention; default flash when flash-attn is installed)
        are forwarded when the installed ImageGenerator takes them; v1.1 with one that does not is refused.
        """
        if route not in ("auto", "diffusers", "repo"):
            raise InputError(
                f"Step1XEditBackbone.from_pretrained: route must be auto|diffusers|repo, got {route!r}"
            )
        if version not in CHECKPOINTS:
            raise InputError(
                f"Step1XEditBackbone.from_pretrained: version must be one of {', '.join(CHECKPOINTS)}, "
                f"got {version!r}"
            )
        pipeline_cls = (
            _optional_class("diffusers", "Step1XEditPipeline") if route in ("auto", "diffusers") else None
        )
        layout = pipeline_cls is not None and has_diffusers_layout(model_path)
        if route == "diffusers" and pipeline_cls is None:
            raise BackboneUnavailableError(f"{INSTALL_HINT} (route='diffusers')")
        if route == "diffusers" and not layout:
            raise InputError(
                f"Step1XEditBackbone: route='diffusers' needs a diffusers layout (model_index.json) at "
                f"{model_path!r}, e.g. {DIFFUSERS_MODEL}; for the repository checkpoint use route='repo'"
            )
        if layout:
            return cls._from_diffusers(
                pipeline_cls,
                model_path,
                device=device,
                torch_dtype=torch_dtype,
                offload=offload,
                kwargs=kwargs,
            )
        generator_cls = _optional_class("inference", "ImageGenerator") if route in ("auto", "repo") else None
        if generator_cls is None:
            raise BackboneUnavailableError(f"{INSTALL_HINT} (route={route!r})")
        return cls._from_repo(
            generator_cls,
            model_path,
            qwen2vl_model_path=qwen2vl_model_path,
            device=device,
            quantized=quantized,
            offload=offload,
            version=version,
            mode=mode,
            torch_dtype=torch_dtype,
            kwargs=kwargs,
        )

    @classmethod
    def _from_diffusers(
        cls, pipeline_cls: Any, model_path: str, *, device: str, torch_dtype: Any, offload: bool, kwargs: dict
    ) -> Any:
        """The diffusers route: ``Step1XEditPipeline`` loaded and wrapped in ``DiffusersEditBackbone``."""
        from ade_runtime.backbones._diffusers import load_pipeline
        from ade_runtime.backbones.diffusers_generic import DiffusersEditBackbone

        repo_only = sorted(set(kwargs) & set(REPO_ONLY_KWARGS))
        if repo_only:
            raise InputError(
                f"Step1XEditBackbone: {', '.join(repo_only)} belong to the repository route; on the "
                "diffusers route pass num_inference_steps and pipeline keyword arguments (call_kwargs)"
            )
        pipe = load_pipeline(
            pipeline_cls, model_path, device=device, torch_dtype=torch_dtype, cpu_offload=offload
        )
        return DiffusersEditBackbone(pipe, name=cls.name, **kwargs)

    @classmethod
    def _from_repo(
        cls,
        generator_cls: Any,
        model_path: str,
        *,
        qwen2vl_model_path: str | None,
        device: str,
        quantized: bool,
        offload: bool,
        version: str,
        mode: str | None,
        torch_dtype: Any,
        kwargs: dict,
    ) -> Step1XEditBackbone:
        """The repository route: upstream's ``ImageGenerator`` over ``model_path``'s checkpoint of ``version``."""
        if not os.path.isdir(model_path):
            from huggingface_hub import snapshot_download  # a Hub id: fetch the checkpoint directory

            model_path = snapshot_download(model_path)
        dit_path = os.path.join(model_path, CHECKPOINTS[version])
        if not os.path.isfile(dit_path):
            raise InputError(
                f"Step1XEditBackbone: {dit_path} not found; version={version!r} needs {CHECKPOINTS[version]} "
                f"in {model_path} (or choose version={'v1.0' if version == 'v1.1' else 'v1.1'})"
            )
        generator = generator_cls(
            **generator_arguments(
                generator_cls,
                dit_path=dit_path,
                ae_path=os.path.join(model_path, "vae.safetensors"),
                qwen2vl_model_path=qwen2vl_model_path or "Qwen/Qwen2.5-VL-7B-Instruct",
                device=device,
                quantized=quantized,
                offload=offload,
                version=version,
                mode=mode,
                torch_dtype=torch_dtype,
            )
        )
        backbone = cls(generator, **kwargs)
        backbone.version = version
        return backbone

    def prepare(self, request: EditRequest) -> EditRequest:
        # ImageGenerator re-encodes per call; it exposes no cache to share across candidates.
        if not isinstance(request.image, Image.Image):
            raise InputError("Step1XEditBackbone.prepare: request.image must be a PIL image")
        return request

    def run(self, state: EditRequest, spec: AttemptSpec) -> AttemptOutput:
        if spec.preview_fn is not None or spec.mask is not None:
            raise InputError("Step1XEditBackbone supports neither previews nor masks (supports_* are False)")
        source = spec.input_image if spec.input_image is not None else state.image
        t0 = time.perf_counter()
        images = self.generator.generate_image(
            spec.prompt,
            negative_prompt=self.negative_prompt,
            ref_images=source.convert("RGB"),
            num_steps=self.num_steps,
            cfg_guidance=self.cfg_guidance,
            seed=int(spec.seed),
            num_samples=1,
            show_progress=False,
            size_level=self.size_level,
        )
        image = images[0]
        if image.size != source.size:
            image = image.resize(source.size, Image.BICUBIC)
        # One batched DiT call per step on [cond, uncond]: two function evaluations.
        nfe = self.num_steps * (2 if self.cfg_guidance != -1 else 1)
        extra = {"size_level": self.size_level, "route": "repo", "version": self.version}
        return AttemptOutput(image=image, nfe=nfe, latency_s=time.perf_counter() - t0, extra=extra)
